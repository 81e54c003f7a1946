// Package procmon is Vigil's process monitor plugin. It subscribes to the
// kernel's process events connector (netlink cn_proc), accounts exactly for
// every event it could not deliver, enriches each exec from /proc (command
// line, credentials, lineage, namespaces, container), and raises first
// detections as alerts: reverse shells, fileless and deleted binaries,
// binaries run from world-writable directories, and services spawning
// shells.
//
// The kernel protocol lives in the cnproc subpackage and the /proc reading
// in procinfo; this package wires them into a Monitor and serves it as an
// sdk.Plugin. cmd/vigil-procmon is the plugin binary.
package procmon

import (
	"context"
	"fmt"
	"os"
	"sync"

	hclog "github.com/hashicorp/go-hclog"

	"github.com/vigil-hids/vigil/plugins/procmon/cnproc"
	"github.com/vigil-hids/vigil/sdk"
)

// Name is the plugin's name, and the prefix of its config keys.
const Name = "procmon"

// Version is the plugin's version.
const Version = "0.1.0"

// Plugin serves a Monitor as a Vigil plugin.
type Plugin struct {
	log hclog.Logger

	mu     sync.Mutex
	cfg    *Config
	reconf chan struct{}

	// seq outlives each Monitor, so events lost while one replaces another
	// after a config change are still counted.
	seq cnproc.SeqTracker
}

// New returns the plugin; it is the sdk.Factory of vigil-procmon.
func New(log hclog.Logger) sdk.Plugin {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Plugin{log: log.Named(Name), cfg: DefaultConfig(), reconf: make(chan struct{}, 1)}
}

// Info returns procmon's identity.
func (p *Plugin) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: Name, Version: Version,
		Description: "process events from the kernel proc connector, with exec enrichment and detections"}, nil
}

// DefaultConfig returns the defaults, for the SDK to decode over.
func (p *Plugin) DefaultConfig(context.Context) (sdk.Config, error) { return DefaultConfig(), nil }

// Configure takes a decoded, validated config. While running, the monitor
// is replaced by one with the new config; events lost in between are
// counted as kernel losses.
func (p *Plugin) Configure(_ context.Context, c sdk.Config) error {
	cfg, ok := c.(*Config)
	if !ok {
		return fmt.Errorf("procmon: config of type %T, want *procmon.Config", c)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	p.cfg = cfg
	p.mu.Unlock()
	select {
	case p.reconf <- struct{}{}:
	default:
	}
	return nil
}

func (p *Plugin) config() *Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

// Run monitors until ctx is cancelled. It fails only if the socket cannot
// be opened at all; read errors are retried inside the monitor.
func (p *Plugin) Run(ctx context.Context, em sdk.Emitter) error {
	host, _ := os.Hostname()
	// A Configure before Run is already in force.
	select {
	case <-p.reconf:
	default:
	}
	for {
		m, err := Start(ctx, p.config(), Deps{Log: p.log, Emitter: em, Seq: &p.seq, Seed: host})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		select {
		case <-ctx.Done():
			return m.Close()
		case <-p.reconf:
			p.log.Info("config changed, restarting the monitor")
			_ = m.Close()
		}
	}
}

// Shutdown has nothing to release: Run's end closed the monitor.
func (p *Plugin) Shutdown(context.Context) error { return nil }
