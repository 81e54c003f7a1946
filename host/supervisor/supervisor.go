// Package supervisor runs Vigil plugins as separate processes through
// HashiCorp go-plugin and keeps them alive.
//
// Each plugin is launched with gRPC only, AutoMTLS, SecureConfig (the
// binary's sha256 is verified before exec), SkipHostEnv, a start timeout and
// a parent-death signal set from the host's one spawner thread (package
// spawn), in its own process group. A plugin that dies is restarted with
// capped exponential backoff and jitter; one that dies young QuarantineAfter
// times in a row is quarantined until its spec changes. A config the plugin
// refuses leaves its previous config in force, and the refusal is reported.
// Stopping asks the plugin to Shutdown (it flushes its events), waits
// ShutdownTimeout, then kills its process group.
//
// The supervisor measures plugin health itself (states, restarts, errors);
// plugins do not grade themselves.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	hclog "github.com/hashicorp/go-hclog"

	"github.com/vigil-hids/vigil/host/spawn"
	"github.com/vigil-hids/vigil/sdk"
)

// Options tune supervision. Zero fields take the defaults in DefaultOptions.
type Options struct {
	HostName    string
	HostVersion string
	// StartTimeout bounds the launch and go-plugin handshake.
	StartTimeout time.Duration
	// CallTimeout bounds Info and Configure.
	CallTimeout time.Duration
	// ShutdownTimeout bounds a graceful stop before the kill.
	ShutdownTimeout time.Duration
	// BackoffInitial and BackoffMax bound the restart delay.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// YoungAge: a plugin that dies sooner than this after its start died
	// young.
	YoungAge time.Duration
	// QuarantineAfter young deaths in a row quarantine the plugin.
	QuarantineAfter int
}

// DefaultOptions are the supervision defaults.
var DefaultOptions = Options{
	StartTimeout:    10 * time.Second,
	CallTimeout:     10 * time.Second,
	ShutdownTimeout: 5 * time.Second,
	BackoffInitial:  250 * time.Millisecond,
	BackoffMax:      5 * time.Minute,
	YoungAge:        30 * time.Second,
	QuarantineAfter: 5,
}

func (o Options) withDefaults() Options {
	d := DefaultOptions
	if o.StartTimeout <= 0 {
		o.StartTimeout = d.StartTimeout
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = d.CallTimeout
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = d.ShutdownTimeout
	}
	if o.BackoffInitial <= 0 {
		o.BackoffInitial = d.BackoffInitial
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = d.BackoffMax
	}
	if o.YoungAge <= 0 {
		o.YoungAge = d.YoungAge
	}
	if o.QuarantineAfter <= 0 {
		o.QuarantineAfter = d.QuarantineAfter
	}
	return o
}

// Clock is the time source; tests inject their own.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Manager supervises a set of plugins.
type Manager struct {
	opts    Options
	log     hclog.Logger
	clock   Clock
	spawner *spawn.Spawner
	hooks   Hooks
	sinkFor func(name string) EventSink

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	plugins map[string]*Plugin
	closed  bool

	obs observers // lifecycle subscribers (Observe)
}

// Config builds a Manager.
type Config struct {
	Options Options
	Log     hclog.Logger
	// Clock defaults to the real clock.
	Clock Clock
	// Spawner starts every plugin process; required.
	Spawner *spawn.Spawner
	Hooks   Hooks
	// Events returns the event sink of a plugin; required.
	Events func(name string) EventSink
}

// New returns a Manager with no plugins.
func New(cfg Config) (*Manager, error) {
	if cfg.Spawner == nil || cfg.Events == nil {
		return nil, errors.New("supervisor: Spawner and Events are required")
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{
		opts:    cfg.Options.withDefaults(),
		log:     cfg.Log,
		clock:   cfg.Clock,
		spawner: cfg.Spawner,
		hooks:   cfg.Hooks,
		sinkFor: cfg.Events,
		ctx:     ctx,
		cancel:  cancel,
		plugins: map[string]*Plugin{},
	}, nil
}

// Set makes the supervised plugins match specs: new names start, changed
// specs are applied, and names no longer listed are stopped and removed.
func (m *Manager) Set(specs []Spec) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("supervisor: closed")
	}
	seen := map[string]bool{}
	for _, s := range specs {
		if s.Name == "" {
			return errors.New("supervisor: a plugin spec has no name")
		}
		if seen[s.Name] {
			return fmt.Errorf("supervisor: plugin %q is listed twice", s.Name)
		}
		seen[s.Name] = true
	}
	for _, s := range specs {
		if p, ok := m.plugins[s.Name]; ok {
			p.Update(s)
			continue
		}
		p := newPlugin(m, s, m.sinkFor(s.Name))
		m.plugins[s.Name] = p
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			p.loop(m.ctx)
		}()
	}
	for name, p := range m.plugins {
		if !seen[name] {
			// Disable, then forget it once its loop has stopped it.
			spec, _ := p.desired()
			spec.Enabled = false
			p.Update(spec)
			delete(m.plugins, name)
		}
	}
	return nil
}

// Poke makes every plugin re-check its start gate now (after a breaker or
// the emergency stop changed).
func (m *Manager) Poke() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.plugins {
		p.poke()
	}
}

// Plugin returns the named plugin, or nil.
func (m *Manager) Plugin(name string) *Plugin {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.plugins[name]
}

// Status returns every plugin's status, sorted by name.
func (m *Manager) Status() []Status {
	m.mu.Lock()
	ps := make([]*Plugin, 0, len(m.plugins))
	for _, p := range m.plugins {
		ps = append(ps, p)
	}
	m.mu.Unlock()
	out := make([]Status, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Close stops every plugin gracefully (in parallel) and waits for them.
// It is idempotent.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

// backoff is the restart delay policy.
type backoff interface {
	Next() time.Duration
	Reset()
}

func (m *Manager) newBackoff(name string) backoff {
	return sdk.NewBackoff(m.opts.HostName+"/"+name, m.opts.BackoffInitial, m.opts.BackoffMax)
}
