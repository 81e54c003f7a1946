// Package governor keeps Vigil's plugins, and the agent as a whole, inside
// their resource limits.
//
// Every Config.Interval (3 s by default, osquery's watchdog period) the
// governor samples each attached plugin, from its cgroup where it has one
// (which covers its children and sees OOM kills) and from /proc otherwise,
// and the host process itself. Each plugin's sample feeds the plugin's
// breaker (package breaker); the sum of all of them feeds the agent
// breaker, which holds the original design's rule: the whole agent at or
// above 5% of one core for N consecutive samples stops every plugin. The
// host keeps running and watching, and lets the plugins back after the next
// check window.
//
// The supervisor drives it:
//
//	gov, err := governor.New(cfg, clock, log)
//	gov.OnTrip(func(plugin string, t breaker.Trip) { /* stop that plugin */ })
//	gov.OnAgentTrip(func(stopped bool, t breaker.Trip) { /* stop all / restart all */ })
//	gov.SetHost(hostGroup)              // or nil: the host is read from /proc
//	err = gov.Start(ctx)
//	p := gov.Add("procmon", limits)     // once per plugin, limits from breaker
//	if ok, wait := p.Allow(); !ok { /* retry after wait */ }
//	// start the plugin in its group, then
//	p.Attach(pid, group)                // group may be nil without cgroups
//	p.ReportDrops(n)                    // events the rate limiter refused
//	p.Detach()                          // when it exited, before group.Delete
//	st := gov.Status()                  // heartbeat, status, registration
//	gov.Close()
//
// Callbacks run on the governor's goroutine (or Detach's caller) with no
// lock held; they must not block for long.
//
// A sample cycle with three plugins costs a few tens of microseconds (see
// docs/governance.md): far below the 0.1% of one core budget at 3 s.
package governor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigil-hids/vigil/host/breaker"
	"github.com/vigil-hids/vigil/host/cgroup"
)

// Clock is the source of time; tests inject a fake one.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Config configures the governor. Zero fields take the defaults below.
type Config struct {
	// Interval is the sampling period.
	Interval time.Duration `json:"interval"`
	// Profile names the breaker profile plugins start from ("normal" or
	// "strict").
	Profile string `json:"profile"`
	// AgentCPUPercent is the agent-wide limit: host and plugins together,
	// in percent of one core.
	AgentCPUPercent float64 `json:"agent_cpu_percent"`
	// AgentSamples is N for the agent-wide rule.
	AgentSamples int `json:"agent_samples"`
	// AgentCooldown is how long plugins stay stopped after the agent-wide
	// rule fired the first time: by default one check window,
	// AgentSamples × Interval. It doubles on each trip up to
	// AgentMaxCooldown.
	AgentCooldown    time.Duration `json:"agent_cooldown"`
	AgentMaxCooldown time.Duration `json:"agent_max_cooldown"`
	// ProcRoot is where procfs is mounted ("" means /proc).
	ProcRoot string `json:"-"`
}

// Defaults.
const (
	DefaultInterval         = 3 * time.Second
	DefaultAgentCPUPercent  = 5
	DefaultAgentSamples     = 4
	DefaultAgentMaxCooldown = 600 * time.Second
)

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Profile == "" {
		c.Profile = breaker.DefaultProfile
	}
	if c.AgentCPUPercent == 0 {
		c.AgentCPUPercent = DefaultAgentCPUPercent
	}
	if c.AgentSamples == 0 {
		c.AgentSamples = DefaultAgentSamples
	}
	if c.AgentCooldown == 0 {
		c.AgentCooldown = time.Duration(c.AgentSamples) * c.Interval
	}
	if c.AgentMaxCooldown == 0 {
		c.AgentMaxCooldown = DefaultAgentMaxCooldown
	}
	return c
}

// Validate checks a configuration (after WithDefaults) and returns every
// problem.
func (c Config) Validate() error {
	var errs []error
	if c.Interval < 100*time.Millisecond || c.Interval > time.Minute {
		errs = append(errs, fmt.Errorf("governor.interval must be between 100ms and 1m (got %s)", c.Interval))
	}
	if _, err := breaker.Profile(c.Profile); err != nil {
		errs = append(errs, fmt.Errorf("governor.profile must be one of %s (got %q)", strings.Join(breaker.Profiles(), ", "), c.Profile))
	}
	if c.AgentCPUPercent < 0.1 || c.AgentCPUPercent > 800 {
		errs = append(errs, fmt.Errorf("governor.agent_cpu_percent must be between 0.1 and 800 (got %g)", c.AgentCPUPercent))
	}
	if c.AgentSamples < 1 || c.AgentSamples > 100 {
		errs = append(errs, fmt.Errorf("governor.agent_samples must be between 1 and 100 (got %d)", c.AgentSamples))
	}
	if c.AgentCooldown < 100*time.Millisecond || c.AgentCooldown > time.Hour {
		errs = append(errs, fmt.Errorf("governor.agent_cooldown must be between 100ms and 1h (got %s)", c.AgentCooldown))
	}
	if c.AgentMaxCooldown < c.AgentCooldown || c.AgentMaxCooldown > 24*time.Hour {
		errs = append(errs, fmt.Errorf("governor.agent_max_cooldown must be between agent_cooldown (%s) and 24h (got %s)", c.AgentCooldown, c.AgentMaxCooldown))
	}
	return errors.Join(errs...)
}

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("governor: closed")

// Governor samples plugins and the agent and drives their breakers.
type Governor struct {
	cfg   Config
	clock Clock
	log   *slog.Logger

	mu       sync.Mutex
	plugins  map[string]*Plugin
	agent    *breaker.Breaker
	host     Source
	hostPrev prev
	agentCPU float64
	agentWhy string
	onTrip   func(plugin string, t breaker.Trip)
	onAgent  func(stopped bool, t breaker.Trip)
	started  bool
	closed   bool
	cancel   context.CancelFunc
	done     chan struct{}
	ready    chan struct{}
	errc     chan error
	buf      []*Plugin
	fire     []func()

	callbackPanics atomic.Uint64
}

// prev is the previous cumulative reading of a source.
type prev struct {
	ok  bool
	at  time.Time
	cpu time.Duration
	oom uint64
}

// New validates cfg (after defaults) and returns a governor that is not
// sampling yet. A nil clock is the system clock.
func New(cfg Config, clock Clock, log *slog.Logger) (*Governor, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if clock == nil {
		clock = systemClock{}
	}
	agentLimits := breaker.Limits{
		CPUPercent:    cfg.AgentCPUPercent,
		MemoryBytes:   math.MaxUint64,
		FloodEvents:   math.MaxUint64,
		Samples:       cfg.AgentSamples,
		Cooldown:      cfg.AgentCooldown,
		MaxCooldown:   cfg.AgentMaxCooldown,
		HealthyWindow: time.Duration(cfg.AgentSamples) * cfg.Interval,
		ForgetAfter:   cfg.AgentMaxCooldown,
	}
	return &Governor{
		cfg:     cfg,
		clock:   clock,
		log:     log.With("component", "governor"),
		plugins: map[string]*Plugin{},
		agent:   breaker.New(agentLimits, clock),
		ready:   make(chan struct{}),
		errc:    make(chan error, 1),
	}, nil
}

// Config returns the configuration in force.
func (g *Governor) Config() Config { return g.cfg }

// OnTrip sets the function called when a plugin's breaker trips; the
// supervisor stops that plugin.
func (g *Governor) OnTrip(fn func(plugin string, t breaker.Trip)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.onTrip = fn
}

// OnAgentTrip sets the function called when the agent-wide rule stops every
// plugin (stopped true) and when the cooldown is over and plugins may start
// again (stopped false).
func (g *Governor) OnAgentTrip(fn func(stopped bool, t breaker.Trip)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.onAgent = fn
}

// SetHost sets the host's own cgroup as the source of the host's use; nil
// reads the host process from /proc.
func (g *Governor) SetHost(group *cgroup.Group) error {
	var src Source
	if group != nil {
		src = groupSource{group}
	} else {
		s, err := newSelfSource(g.cfg.ProcRoot)
		if err != nil {
			return err
		}
		src = s
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.host = src
	g.hostPrev = prev{}
	return nil
}

// Add registers a plugin with its limits (see breaker.Profile and
// breaker.Overrides) and returns its handle. Adding a name again updates
// its limits and returns the same handle, breaker state included.
func (g *Governor) Add(name string, limits breaker.Limits) *Plugin {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p, ok := g.plugins[name]; ok {
		p.br.SetLimits(limits)
		return p
	}
	p := &Plugin{g: g, name: name, br: breaker.New(limits, g.clock)}
	g.plugins[name] = p
	return p
}

// Remove forgets a plugin (it was uninstalled).
func (g *Governor) Remove(name string) {
	g.mu.Lock()
	p := g.plugins[name]
	delete(g.plugins, name)
	g.mu.Unlock()
	if p != nil {
		p.Detach()
	}
}

// Start validates nothing further and starts sampling every interval until
// ctx ends or Close is called.
func (g *Governor) Start(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	if g.started {
		return nil
	}
	if g.host == nil {
		s, err := newSelfSource(g.cfg.ProcRoot)
		if err != nil {
			return err
		}
		g.host = s
	}
	ctx, g.cancel = context.WithCancel(ctx)
	g.done = make(chan struct{})
	g.started = true
	go g.loop(ctx)
	close(g.ready)
	return nil
}

func (g *Governor) loop(ctx context.Context) {
	defer close(g.done)
	defer func() {
		if r := recover(); r != nil {
			g.log.Error("governor panicked; plugins are no longer watched", "panic", r)
			g.errc <- fmt.Errorf("governor: panic: %v", r)
		}
	}()
	t := time.NewTicker(g.cfg.Interval)
	defer t.Stop()
	g.Sample()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.Sample()
		}
	}
}

// Ready is closed once sampling has started.
func (g *Governor) Ready() <-chan struct{} { return g.ready }

// Err delivers the error that stopped sampling early, if any.
func (g *Governor) Err() <-chan error { return g.errc }

// Close stops sampling and waits for the sampling goroutine. It is
// idempotent.
func (g *Governor) Close() error {
	g.mu.Lock()
	g.closed = true
	cancel, done := g.cancel, g.done
	g.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	return nil
}

// Sample runs one sampling cycle now. The sampling goroutine calls it every
// interval; tests and benchmarks call it directly with an injected clock.
func (g *Governor) Sample() {
	g.mu.Lock()
	now := g.clock.Now()
	plugins := g.buf[:0]
	for _, p := range g.plugins {
		plugins = append(plugins, p)
	}
	agentOpen := g.agent.State() == breaker.Open
	g.fire = g.fire[:0]

	var total, hostPct float64
	if g.host != nil {
		if r, err := g.host.Read(); err == nil {
			hostPct, _ = g.hostPrev.advance(now, r)
			total += hostPct
		}
	}
	type share struct {
		name string
		pct  float64
	}
	var top share
	for _, p := range plugins {
		pct, trip, ok := p.sample(now, !agentOpen)
		total += pct
		if pct > top.pct {
			top = share{p.name, pct}
		}
		if ok {
			name, fn := p.name, g.onTrip
			g.log.Warn("plugin breaker tripped", "plugin", name, "reason", string(trip.Reason), "detail", trip.Detail, "cooldown", trip.Cooldown)
			if fn != nil {
				g.fire = append(g.fire, func() { fn(name, trip) })
			}
		}
	}
	g.agentCPU = total
	if agentOpen {
		if ok, _ := g.agent.Allow(); ok {
			g.log.Info("agent-wide cooldown over; plugins may start again")
			if fn := g.onAgent; fn != nil {
				g.fire = append(g.fire, func() { fn(false, breaker.Trip{At: now}) })
			}
		}
	} else if trip, ok := g.agent.Observe(breaker.Sample{CPUPercent: total}); ok {
		trip.Detail = fmt.Sprintf("agent %s (host %.1f%%", trip.Detail, hostPct)
		if top.name != "" {
			trip.Detail += fmt.Sprintf(", top plugin %s %.1f%%", top.name, top.pct)
		}
		trip.Detail += ")"
		g.agentWhy = trip.Detail
		g.log.Warn("agent-wide limit reached; stopping every plugin", "detail", trip.Detail, "cooldown", trip.Cooldown)
		if fn := g.onAgent; fn != nil {
			g.fire = append(g.fire, func() { fn(true, trip) })
		}
	}
	clear(plugins)
	g.buf = plugins[:0]
	fire := g.fire
	g.mu.Unlock()
	for _, f := range fire {
		g.call(f)
	}
}

// call runs a callback; a panic in it is logged and counted, and does not
// stop the governor.
func (g *Governor) call(f func()) {
	defer func() {
		if r := recover(); r != nil {
			g.callbackPanics.Add(1)
			g.log.Error("governor callback panicked", "panic", r)
		}
	}()
	f()
}

// CallbackPanics counts the OnTrip and OnAgentTrip callbacks that panicked.
func (g *Governor) CallbackPanics() uint64 { return g.callbackPanics.Load() }

// advance records a cumulative reading and returns the CPU percentage of
// one core used since the previous one, and the new OOM kills.
func (p *prev) advance(now time.Time, r Reading) (pct float64, oom uint64) {
	if p.ok {
		if dt := now.Sub(p.at); dt > 0 && r.CPU >= p.cpu {
			pct = 100 * float64(r.CPU-p.cpu) / float64(dt)
		}
		if r.OOMKills > p.oom {
			oom = r.OOMKills - p.oom
		}
	}
	*p = prev{ok: true, at: now, cpu: r.CPU, oom: r.OOMKills}
	return pct, oom
}

// Status is the governor's state for the heartbeat, `vigil-host status`
// and the registration value.
type Status struct {
	// Agent is the agent-wide breaker; AgentCPUPercent the last total.
	Agent           breaker.Status `json:"agent"`
	AgentCPUPercent float64        `json:"agent_cpu_percent"`
	// AgentReason is what last fired the agent-wide rule.
	AgentReason string         `json:"agent_reason,omitempty"`
	Plugins     []PluginStatus `json:"plugins"`
}

// Status returns a snapshot, plugins sorted by name.
func (g *Governor) Status() Status {
	g.mu.Lock()
	s := Status{Agent: g.agent.Status(), AgentCPUPercent: g.agentCPU, AgentReason: g.agentWhy}
	names := make([]string, 0, len(g.plugins))
	for n := range g.plugins {
		names = append(names, n)
	}
	sort.Strings(names)
	ps := make([]*Plugin, len(names))
	for i, n := range names {
		ps[i] = g.plugins[n]
	}
	g.mu.Unlock()
	for _, p := range ps {
		s.Plugins = append(s.Plugins, p.Status())
	}
	return s
}

// Plugin returns the handle of a registered plugin, or nil.
func (g *Governor) Plugin(name string) *Plugin {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.plugins[name]
}

// Names returns the registered plugins, sorted.
func (g *Governor) Names() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	names := make([]string, 0, len(g.plugins))
	for n := range g.plugins {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
