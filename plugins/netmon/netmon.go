// Package netmon is Vigil's network monitor plugin. Every interval it takes
// a snapshot of the host's TCP and UDP sockets (IPv4 and IPv6) through
// netlink sock_diag, diffs it against the previous one and reports new and
// closed listeners and new outbound connections, aggregated per process and
// remote endpoint. Sockets are attributed to processes through an
// incremental /proc walk (see resolver), and three detections raise alerts
// with stable rule ids: an unexpected listener, an outbound connection to a
// blocklisted network, and a shell holding a network socket.
//
// A snapshot runs within a CPU budget: past it the snapshot stops early and
// says so, and the interval stretches so the average CPU share stays under
// cpu_percent. /proc/net/tcp* is read only when sock_diag is unavailable.
//
// The binary is cmd/vigil-netmon; docs/netmon.md describes the events,
// rules, configuration and measured figures.
package netmon

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	hclog "github.com/hashicorp/go-hclog"

	"github.com/vigil-hids/vigil/sdk"
)

// Name is the plugin's name.
const Name = "netmon"

// Version is the plugin's version.
const Version = "0.1.0"

// Plugin implements sdk.Plugin.
type Plugin struct {
	log   hclog.Logger
	clock sdk.Clock

	mu      sync.Mutex
	cfg     *Config
	stopped bool
	cancel  context.CancelFunc // ends the running Run
	running chan struct{}      // closed when Run returns; nil when not running
}

// New makes the plugin; it is netmon's sdk.Factory.
func New(log hclog.Logger) sdk.Plugin { return NewWithClock(log, sdk.SystemClock()) }

// NewWithClock makes the plugin with a clock of the caller's (tests).
func NewWithClock(log hclog.Logger, clock sdk.Clock) *Plugin {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Plugin{log: log.Named(Name), clock: clock, cfg: DefaultConfig()}
}

// Info returns netmon's identity.
func (p *Plugin) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: Name, Version: Version, Description: "TCP/UDP sockets over netlink sock_diag: new listeners, new outbound connections, process attribution"}, nil
}

// DefaultConfig returns the defaults.
func (p *Plugin) DefaultConfig(context.Context) (sdk.Config, error) { return DefaultConfig(), nil }

// Configure takes a new config; a running Run picks it up at its next
// snapshot.
func (p *Plugin) Configure(_ context.Context, c sdk.Config) error {
	cfg, ok := c.(*Config)
	if !ok {
		return fmt.Errorf("netmon: config of type %T", c)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg = cfg
	return nil
}

func (p *Plugin) config() *Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

// Run takes snapshots until ctx is done or Shutdown is called. The snapshot
// loop runs under an sdk.Guard, so a panic in it is counted and the loop
// restarted instead of ending the plugin.
func (p *Plugin) Run(ctx context.Context, em sdk.Emitter) error {
	p.mu.Lock()
	if p.running != nil || p.stopped {
		p.mu.Unlock()
		return fmt.Errorf("netmon: run: already running or shut down")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	p.running, p.cancel = done, cancel
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.running, p.cancel = nil, nil
		p.mu.Unlock()
		close(done)
	}()
	g := sdk.NewGuard(ctx, p.log, em, sdk.GuardOptions{Seed: hostSeed()})
	g.Go("snapshots", func(ctx context.Context) error { return p.loop(ctx, em) })
	g.Wait()
	return nil
}

func hostSeed() string {
	h, _ := os.Hostname()
	return h + "/" + Name
}

// loop is the snapshot loop.
func (p *Plugin) loop(ctx context.Context, em sdk.Emitter) error {
	cfg := p.config()
	m, err := newMonitor(cfg, p.log, p.clock, em)
	if err != nil {
		return err
	}
	defer m.Close()
	retry := sdk.NewBackoff(hostSeed(), cfg.Interval.D(), cfg.MaxInterval.D())
	retry.Clock = p.clock
	for ctx.Err() == nil {
		if c := p.config(); c != m.cfg {
			if err := m.apply(c); err != nil {
				p.log.Error("applying config", "error", err)
			}
		}
		st, err := m.snapshot()
		var wait time.Duration
		if err != nil {
			wait = retry.Next()
			p.log.Warn("snapshot failed", "error", err, "retry_in", wait)
		} else {
			retry.Reset()
			wait = m.pace(st)
			p.log.Debug("snapshot", "sockets", st.Sockets, "listeners", st.Listeners, "new_outbound", st.NewOutbound,
				"cpu", st.CPU, "wall", st.Wall, "scanned", st.Scanned, "misses", st.Misses, "events", st.Events, "truncated", st.Truncated)
		}
		if err := p.clock.Sleep(ctx, wait); err != nil {
			return nil
		}
	}
	return nil
}

// Shutdown ends Run and waits for it, within ctx's deadline.
func (p *Plugin) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.stopped = true
	if p.cancel != nil {
		p.cancel()
	}
	done := p.running
	p.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("netmon: waiting for snapshots to stop: %w", ctx.Err())
	}
}
