// Package example is the plugin to read first when writing a Vigil plugin
// (docs/plugin-authors.md walks through it). It samples the load average
// and memory from /proc every interval, emits each sample as a "loadavg"
// event, and raises a "high_load" alert (severity warning) when the
// one-minute load per CPU goes above a threshold. It answers the task
// "snapshot" with a fresh sample as JSON.
//
// What it shows: a config with defaults, tag rules and a pure Validate; a
// Run that owns its goroutines through sdk.Guard; events that reuse their
// fields slice and take their time from the SDK's coarse clock; a
// plugin counter; reconfiguration while running; and tests that need no
// host (sdktest) and read a fake /proc from testdata.
package example

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"sync"
	"time"

	hclog "github.com/hashicorp/go-hclog"

	"github.com/vigil-hids/vigil/sdk"
)

// Name is the plugin's name, as written in host configs.
const Name = "example"

// Version is the plugin's version; a variable so that a release build can
// stamp it (-ldflags "-X github.com/vigil-hids/vigil/plugins/example.Version=1.1.0",
// as make run does for its signed example release).
var Version = "1.0.0"

// Config is the example plugin's configuration. Every key is optional: a
// config with only {"interval": "2s"} keeps the other defaults.
type Config struct {
	Interval        sdk.Duration `json:"interval" vigil:"min=1s,max=1h" desc:"how often /proc is sampled"`
	AlertLoadPerCPU float64      `json:"alert_load_per_cpu" vigil:"min=0.1,max=1000" desc:"raise high_load when the 1-minute load per CPU goes above this"`
	ProcRoot        string       `json:"proc_root" desc:"where procfs is mounted; tests point it at testdata"`
}

// DefaultConfig returns the defaults. The server validates configs against
// it (plugins/catalog) before writing them.
func DefaultConfig() *Config {
	return &Config{Interval: sdk.Duration(10 * time.Second), AlertLoadPerCPU: 2, ProcRoot: "/proc"}
}

// Validate checks what the tags cannot. It is pure: it looks only at c.
func (c *Config) Validate() error {
	var errs []error
	if !filepath.IsAbs(c.ProcRoot) {
		errs = append(errs, fmt.Errorf("%s.proc_root must be an absolute path (got %q)", Name, c.ProcRoot))
	}
	if math.IsNaN(c.AlertLoadPerCPU) {
		errs = append(errs, fmt.Errorf("%s.alert_load_per_cpu must be a number (got NaN)", Name))
	}
	return errors.Join(errs...)
}

// Counter names this plugin reports.
const (
	CounterSamples      = "samples_total"
	CounterSampleErrors = "sample_errors_total"
)

// Plugin samples /proc.
type Plugin struct {
	log hclog.Logger

	mu  sync.Mutex
	cfg *Config

	// reconfigured wakes the sampler when Configure changes the config,
	// so a new interval or proc_root applies at once.
	reconfigured chan struct{}
}

// New returns the plugin. It is the sdk.Factory passed to sdk.Serve, and
// to sdktest.New in tests.
func New(log hclog.Logger) sdk.Plugin {
	return &Plugin{log: log.Named(Name), cfg: DefaultConfig(), reconfigured: make(chan struct{}, 1)}
}

// Info implements sdk.Plugin.
func (p *Plugin) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: Name, Version: Version, Description: "load average and memory from /proc, with a high-load alert"}, nil
}

// DefaultConfig implements sdk.Plugin.
func (p *Plugin) DefaultConfig(context.Context) (sdk.Config, error) { return DefaultConfig(), nil }

// Configure implements sdk.Plugin. The SDK has already decoded the JSON
// strictly over DefaultConfig and run the tag rules and Validate, so the
// config is known good here.
func (p *Plugin) Configure(_ context.Context, c sdk.Config) error {
	cfg, ok := c.(*Config)
	if !ok {
		return fmt.Errorf("config of type %T, want *example.Config", c)
	}
	p.mu.Lock()
	p.cfg = cfg
	p.mu.Unlock()
	select {
	case p.reconfigured <- struct{}{}:
	default: // a wake-up is already pending
	}
	return nil
}

func (p *Plugin) config() *Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

// Run implements sdk.Plugin. The sampler runs under a Guard: if it
// panicked, the Guard would log and count the panic and start it again
// after a backoff, instead of the whole plugin process dying.
func (p *Plugin) Run(ctx context.Context, em sdk.Emitter) error {
	g := sdk.NewGuard(ctx, p.log, em, sdk.GuardOptions{Seed: Name})
	g.Go("sampler", func(ctx context.Context) error { return p.sampleLoop(ctx, em) })
	g.Wait()
	return nil
}

// sampleLoop samples at once, then every interval, and again whenever the
// config changes, until ctx is done.
func (p *Plugin) sampleLoop(ctx context.Context, em sdk.Emitter) error {
	samples, failures := em.Counter(CounterSamples), em.Counter(CounterSampleErrors)
	var (
		fields [8]sdk.Field // reused by every event: Emit copies what it needs
		high   bool         // an alert is raised and not yet cleared
	)
	select { // the config is read fresh below: a wake-up from before Run is moot
	case <-p.reconfigured:
	default:
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-p.reconfigured:
			if !timer.Stop() {
				select { // drain a fire that raced with the wake-up
				case <-timer.C:
				default:
				}
			}
		}
		cfg := p.config()
		timer.Reset(cfg.Interval.D())

		s, err := readSample(cfg.ProcRoot)
		if err != nil {
			failures.Add(1)
			p.log.Warn("sampling failed", "error", err)
			continue
		}
		samples.Add(1)

		// Time is left zero: the SDK stamps the event with its coarse
		// clock, so a busy plugin pays no clock read per event.
		_ = em.Emit(&sdk.Event{
			Type:     "loadavg",
			Severity: sdk.SevInfo,
			Fields: append(fields[:0],
				sdk.Int("load1_milli", milli(s.Load1)),
				sdk.Int("load5_milli", milli(s.Load5)),
				sdk.Int("load15_milli", milli(s.Load15)),
				sdk.Int("runnable", int64(s.Runnable)),
				sdk.Int("procs", int64(s.Procs)),
				sdk.Int("cpus", int64(s.CPUs)),
				sdk.Int("mem_total_kb", int64(s.MemTotalKB)),
				sdk.Int("mem_available_kb", int64(s.MemAvailableKB)),
			),
		})

		// Alert on the way up only, and re-arm once the load is back
		// under the threshold: one alert per episode, not one per sample.
		over := s.LoadPerCPU() > cfg.AlertLoadPerCPU
		if over && !high {
			if err := em.Emit(&sdk.Event{
				Type:     "high_load",
				Alert:    true,
				Severity: sdk.SevWarning,
				Fields: append(fields[:0],
					sdk.Int("load1_milli", milli(s.Load1)),
					sdk.Int("cpus", int64(s.CPUs)),
					sdk.Int("load_per_cpu_milli", milli(s.LoadPerCPU())),
					sdk.Int("threshold_milli", milli(cfg.AlertLoadPerCPU)),
				),
			}); err != nil {
				// Dropped (already counted by the SDK): try again next sample.
				continue
			}
		}
		high = over
	}
}

// milli returns x in thousandths, the way event fields carry fractions.
func milli(x float64) int64 { return int64(math.Round(x * 1000)) }

// Snapshot is the result of the "snapshot" task.
type Snapshot struct {
	Sample
	LoadPerCPU float64 `json:"load_per_cpu"`
	Alerting   bool    `json:"alerting"`
}

// Task implements sdk.Tasker: "snapshot" reads /proc now and returns the
// values as JSON.
func (p *Plugin) Task(_ context.Context, req sdk.TaskRequest) (json.RawMessage, error) {
	switch req.Name {
	case "snapshot":
		cfg := p.config()
		s, err := readSample(cfg.ProcRoot)
		if err != nil {
			return nil, err
		}
		return json.Marshal(Snapshot{Sample: s, LoadPerCPU: s.LoadPerCPU(), Alerting: s.LoadPerCPU() > cfg.AlertLoadPerCPU})
	default:
		return nil, fmt.Errorf("unknown task %q (known: snapshot)", req.Name)
	}
}

// Shutdown implements sdk.Plugin. The sampler has already stopped with
// Run's context; there is nothing else to release.
func (p *Plugin) Shutdown(context.Context) error { return nil }
