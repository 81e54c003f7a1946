// Package testplugin is a Vigil plugin that misbehaves on request, for the
// host's tests: it burns CPU, eats memory, floods events, hangs, crashes,
// panics, exits and leaves children behind, each chosen by its config, so a
// test can prove that the host's supervisor, breakers, cgroups and drop
// accounting do what they promise against a real plugin process.
//
// With an empty config it behaves: at Run start it emits one "started"
// event carrying its pid, then idles until stopped. Never ship it to a
// fleet.
package testplugin

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	hclog "github.com/hashicorp/go-hclog"

	"github.com/vigil-hids/vigil/sdk"
)

// Name is the plugin's name.
const Name = "testplugin"

// Version is the plugin's version.
const Version = "0.1.0"

// Config chooses the misbehaviours. The zero value of each key turns its
// behaviour off.
type Config struct {
	SpinCPUPercent int `json:"spin_cpu_percent" vigil:"min=0,max=100" desc:"busy-loop this share of each 10ms on every spin thread"`
	SpinThreads    int `json:"spin_threads" vigil:"min=1,max=64" desc:"busy-loop goroutines (each may take one core)"`

	AllocMB       int `json:"alloc_mb" vigil:"min=0,max=65536" desc:"MiB allocated and touched at Run start"`
	AllocMBPerSec int `json:"alloc_mb_per_sec" vigil:"min=0,max=4096" desc:"MiB more allocated and touched every second"`
	AllocMaxMB    int `json:"alloc_max_mb" vigil:"min=1,max=65536" desc:"growth stops here, so a broken limit cannot take the test machine"`

	FloodRate  int `json:"flood_rate" vigil:"min=0,max=10000000" desc:"flood events per second; 0 is as fast as possible"`
	FloodTotal int `json:"flood_total" vigil:"min=-1" desc:"flood events to emit; 0 is no flood, -1 floods until stopped"`
	AlertEvery int `json:"alert_every" vigil:"min=0" desc:"every Nth flood event is an alert (severity warning); 0 is none"`

	HangConfigure bool `json:"hang_configure" desc:"Configure never returns, ignoring its deadline"`
	HangShutdown  bool `json:"hang_shutdown" desc:"Shutdown never returns, ignoring its deadline"`

	CrashAtStart int          `json:"crash_at_start" vigil:"min=0,max=255" desc:"exit with this code as Run starts; 0 is off"`
	PanicAtStart bool         `json:"panic_at_start" desc:"panic inside Run as it starts (the SDK turns it into a Run error)"`
	PanicAfter   sdk.Duration `json:"panic_after" desc:"panic on a background goroutine this long after Run starts, killing the process; 0 is off"`
	ExitAfter    sdk.Duration `json:"exit_after" desc:"exit this long after Run starts; 0 is off"`
	ExitCode     int          `json:"exit_code" vigil:"min=0,max=255" desc:"exit code for exit_after"`

	SpawnChild bool `json:"spawn_child" desc:"start 'sleep 3600' as a child at Run start and report its pid in a child_spawned event"`

	EmitCounter      string `json:"emit_counter" desc:"set the plugin counter of this name at Run start; empty is off"`
	EmitCounterValue uint64 `json:"emit_counter_value" desc:"value for emit_counter"`
}

// DefaultConfig returns the defaults: every misbehaviour off.
func DefaultConfig() *Config {
	return &Config{SpinThreads: 1, AllocMaxMB: 4096, ExitCode: 1, EmitCounterValue: 1}
}

// Validate checks the rules the tags cannot express.
func (c *Config) Validate() error {
	if c.AllocMB > c.AllocMaxMB {
		return fmt.Errorf("%s.alloc_mb must be at most alloc_max_mb, %d (got %d)", Name, c.AllocMaxMB, c.AllocMB)
	}
	return nil
}

// Plugin is the misbehaving plugin.
type Plugin struct {
	log hclog.Logger

	mu  sync.Mutex
	cfg *Config

	hang chan struct{} // never closed: what a hung plugin waits on
	mem  [][]byte      // allocated memory, kept reachable
	kids []*exec.Cmd
}

// New returns the plugin; it is the factory passed to sdk.Serve.
func New(log hclog.Logger) sdk.Plugin {
	return &Plugin{log: log.Named(Name), cfg: DefaultConfig(), hang: make(chan struct{})}
}

// Info implements sdk.Plugin.
// Info implements sdk.Plugin. The host's tests run several copies of this
// binary under different names; a copy answers to the name the host gave
// it in VIGIL_PLUGIN_NAME when that starts with "tp-", and to Name
// otherwise, so the host's check that a binary serves the plugin it was
// configured as still has teeth.
func (p *Plugin) Info(context.Context) (sdk.Info, error) {
	name := Name
	if n := os.Getenv("VIGIL_PLUGIN_NAME"); strings.HasPrefix(n, "tp-") {
		name = n
	}
	return sdk.Info{Name: name, Version: Version, Description: "misbehaves on request, for the host's tests"}, nil
}

// DefaultConfig implements sdk.Plugin.
func (p *Plugin) DefaultConfig(context.Context) (sdk.Config, error) { return DefaultConfig(), nil }

// Configure implements sdk.Plugin.
func (p *Plugin) Configure(_ context.Context, c sdk.Config) error {
	cfg := c.(*Config)
	if cfg.HangConfigure {
		p.log.Warn("hanging in Configure as configured")
		<-p.hang
	}
	p.mu.Lock()
	p.cfg = cfg
	p.mu.Unlock()
	return nil
}

func (p *Plugin) config() *Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

// Run implements sdk.Plugin: it starts the configured misbehaviours and
// waits for ctx.
func (p *Plugin) Run(ctx context.Context, em sdk.Emitter) error {
	cfg := p.config()
	if cfg.CrashAtStart != 0 {
		p.log.Error("crashing at start as configured", "exit_code", cfg.CrashAtStart)
		os.Exit(cfg.CrashAtStart)
	}
	if cfg.PanicAtStart {
		panic("testplugin: panic_at_start")
	}
	_ = em.Emit(&sdk.Event{Type: "started", Severity: sdk.SevInfo, Fields: []sdk.Field{sdk.Int("pid", int64(os.Getpid()))}})
	if cfg.EmitCounter != "" {
		em.Counter(cfg.EmitCounter).Set(cfg.EmitCounterValue)
	}
	if cfg.SpawnChild {
		if err := p.spawnChild(em); err != nil {
			return err
		}
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := func(f func(context.Context)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(ctx)
		}()
	}
	if cfg.SpinCPUPercent > 0 {
		for i := 0; i < cfg.SpinThreads; i++ {
			start(func(ctx context.Context) { spin(ctx, cfg.SpinCPUPercent) })
		}
	}
	if cfg.AllocMB > 0 || cfg.AllocMBPerSec > 0 {
		start(func(ctx context.Context) { p.allocate(ctx, cfg) })
	}
	if cfg.FloodTotal != 0 {
		start(func(ctx context.Context) { flood(ctx, em, cfg) })
	}
	if cfg.PanicAfter > 0 {
		start(func(ctx context.Context) {
			if sleep(ctx, cfg.PanicAfter.D()) {
				panic("testplugin: panic_after " + cfg.PanicAfter.D().String())
			}
		})
	}
	if cfg.ExitAfter > 0 {
		start(func(ctx context.Context) {
			if sleep(ctx, cfg.ExitAfter.D()) {
				p.log.Error("exiting as configured", "exit_code", cfg.ExitCode)
				os.Exit(cfg.ExitCode)
			}
		})
	}
	<-ctx.Done()
	return nil
}

// Shutdown implements sdk.Plugin. Children are left running on purpose:
// the host must kill them.
func (p *Plugin) Shutdown(context.Context) error {
	if p.config().HangShutdown {
		p.log.Warn("hanging in Shutdown as configured")
		<-p.hang
	}
	p.mu.Lock()
	p.mem = nil
	p.mu.Unlock()
	return nil
}

// Task implements sdk.Tasker: "echo" returns its arguments, "fail"
// returns an error, "config" returns the config in force.
func (p *Plugin) Task(_ context.Context, req sdk.TaskRequest) (json.RawMessage, error) {
	switch req.Name {
	case "echo":
		return req.Args, nil
	case "fail":
		return nil, fmt.Errorf("failing as asked")
	case "config":
		return json.Marshal(p.config())
	default:
		return nil, fmt.Errorf("unknown task %q (known: config, echo, fail)", req.Name)
	}
}

func (p *Plugin) spawnChild(em sdk.Emitter) error {
	cmd := exec.Command("sleep", "3600")
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("spawning child: %w", err)
	}
	p.mu.Lock()
	p.kids = append(p.kids, cmd)
	p.mu.Unlock()
	_ = em.Emit(&sdk.Event{Type: "child_spawned", Severity: sdk.SevInfo, Fields: []sdk.Field{sdk.Int("pid", int64(cmd.Process.Pid))}})
	return nil
}

// sleep waits d and reports whether it did (false if ctx ended first).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// spin busy-loops percent of every 10ms until ctx is done.
func spin(ctx context.Context, percent int) {
	const period = 10 * time.Millisecond
	busy := period * time.Duration(percent) / 100
	for ctx.Err() == nil {
		start := time.Now()
		for time.Since(start) < busy {
			for i := 0; i < 1000; i++ {
				runtime.KeepAlive(i)
			}
		}
		if rest := period - busy; rest > 0 {
			sleep(ctx, rest)
		}
	}
}

// allocate allocates and touches cfg.AllocMB, then cfg.AllocMBPerSec more
// every second, up to cfg.AllocMaxMB.
func (p *Plugin) allocate(ctx context.Context, cfg *Config) {
	total := 0
	grow := func(mb int) {
		mb = min(mb, cfg.AllocMaxMB-total)
		if mb <= 0 {
			return
		}
		b := make([]byte, mb<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1 // touch every page so it is resident
		}
		total += mb
		p.mu.Lock()
		p.mem = append(p.mem, b)
		p.mu.Unlock()
		p.log.Debug("allocated", "total_mb", total)
	}
	grow(cfg.AllocMB)
	if cfg.AllocMBPerSec == 0 {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			grow(cfg.AllocMBPerSec)
		}
	}
}

// flood emits cfg.FloodTotal events (forever if -1) at cfg.FloodRate per
// second (as fast as possible if 0). Every cfg.AlertEvery-th is an alert.
// Each event carries its sequence number n from 1. A paced flood wakes at
// most every millisecond and catches up to rate × elapsed time, so high
// rates are met on average.
func flood(ctx context.Context, em sdk.Emitter, cfg *Config) {
	fields := make([]sdk.Field, 2)
	ev := sdk.Event{Type: "flood", Fields: fields}
	more := func(n int) bool { return cfg.FloodTotal < 0 || n <= cfg.FloodTotal }
	emit := func(n int) {
		alert := cfg.AlertEvery > 0 && n%cfg.AlertEvery == 0
		ev.Alert, ev.Severity = alert, sdk.SevInfo
		if alert {
			ev.Severity = sdk.SevWarning
		}
		fields[0] = sdk.Int("n", int64(n))
		fields[1] = sdk.Bool("alert", alert)
		_ = em.Emit(&ev)
	}
	if cfg.FloodRate == 0 {
		for n := 1; more(n); n++ {
			if n%1024 == 0 && ctx.Err() != nil {
				return
			}
			emit(n)
		}
		return
	}
	tick := time.NewTicker(max(time.Second/time.Duration(cfg.FloodRate), time.Millisecond))
	defer tick.Stop()
	start := time.Now()
	for n := 1; more(n); {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		due := int(time.Since(start).Seconds() * float64(cfg.FloodRate))
		for ; n <= due && more(n); n++ {
			emit(n)
		}
	}
}
