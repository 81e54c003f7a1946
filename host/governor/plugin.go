package governor

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigil-hids/vigil/host/breaker"
	"github.com/vigil-hids/vigil/host/cgroup"
)

// Plugin is the governor's handle on one plugin.
type Plugin struct {
	g    *Governor
	name string
	br   *breaker.Breaker

	drops atomic.Uint64

	mu     sync.Mutex
	pid    int
	src    Source
	prev   prev
	last   breaker.Sample
	errors int
}

// Name returns the plugin's name.
func (p *Plugin) Name() string { return p.name }

// Attach starts watching a plugin process that has just started, through
// its cgroup when group is not nil, through /proc otherwise.
func (p *Plugin) Attach(pid int, group *cgroup.Group) {
	var src Source = treeSource{root: p.g.cfg.ProcRoot, pid: pid}
	if group != nil {
		src = groupSource{group}
	}
	p.AttachSource(pid, src)
}

// AttachSource starts watching a plugin process through src. It reads src
// once as the baseline, so the first sample after it already judges the
// plugin and a hog trips N × interval after it starts, not one interval
// later.
func (p *Plugin) AttachSource(pid int, src Source) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pid, p.src, p.prev, p.last, p.errors = pid, src, prev{}, breaker.Sample{}, 0
	p.drops.Store(0)
	if r, err := src.Read(); err == nil {
		p.prev.advance(p.g.clock.Now(), r)
	}
}

// Detach stops watching the plugin after its process exited. Call it before
// deleting the plugin's cgroup: it reads the group one last time, so an OOM
// kill that ended the process trips the breaker (oom_kill) and the restart
// waits for the cooldown.
func (p *Plugin) Detach() {
	p.mu.Lock()
	src := p.src
	var oom uint64
	if src != nil && p.prev.ok {
		if r, err := src.Read(); err == nil && r.OOMKills > p.prev.oom {
			oom = r.OOMKills - p.prev.oom
		}
	}
	p.pid, p.src, p.prev = 0, nil, prev{}
	p.mu.Unlock()
	if oom == 0 {
		return
	}
	trip, ok := p.br.Trip(breaker.ReasonOOMKill, fmt.Sprintf("%d process(es) OOM-killed in the plugin's cgroup", oom))
	if !ok {
		return
	}
	p.g.log.Warn("plugin breaker tripped", "plugin", p.name, "reason", string(trip.Reason), "detail", trip.Detail, "cooldown", trip.Cooldown)
	p.g.mu.Lock()
	fn := p.g.onTrip
	p.g.mu.Unlock()
	if fn != nil {
		p.g.call(func() { fn(p.name, trip) })
	}
}

// ReportDrops adds events the host's rate limiter refused from the plugin
// since the last report. A plugin refused in Limits.Samples consecutive
// intervals trips with reason event_flood.
func (p *Plugin) ReportDrops(rateLimited uint64) { p.drops.Add(rateLimited) }

// Allow reports whether the plugin may (re)start now; the supervisor asks
// before every start. It is false while the plugin's breaker or the
// agent-wide breaker is open, with how long to wait.
func (p *Plugin) Allow() (ok bool, retryAfter time.Duration) {
	if st := p.g.agent.Status(); st.State == breaker.Open {
		return false, max(st.CooldownLeft, time.Millisecond)
	}
	return p.br.Allow()
}

// SetLimits changes the plugin's limits (a new profile or override from the
// desired state). Its cgroup limits are the supervisor's to update.
func (p *Plugin) SetLimits(l breaker.Limits) { p.br.SetLimits(l) }

// Limits returns the plugin's limits.
func (p *Plugin) Limits() breaker.Limits { return p.br.Limits() }

// Breaker returns the plugin's breaker.
func (p *Plugin) Breaker() *breaker.Breaker { return p.br }

// sample reads the plugin once and, when observe is set, feeds its breaker.
// It returns the CPU percentage it measured.
func (p *Plugin) sample(now time.Time, observe bool) (float64, breaker.Trip, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.src == nil {
		return 0, breaker.Trip{}, false
	}
	if p.prev.ok && now.Sub(p.prev.at) < p.g.cfg.Interval/10 {
		// Attached a moment ago: too short a window to judge; the next
		// cycle will.
		return 0, breaker.Trip{}, false
	}
	r, err := p.src.Read()
	if err != nil {
		// The process may have exited just now; Detach will follow.
		p.errors++
		if p.errors == 3 {
			p.g.log.Warn("cannot sample plugin", "plugin", p.name, "pid", p.pid, "err", err)
		}
		return 0, breaker.Trip{}, false
	}
	p.errors = 0
	first := !p.prev.ok
	pct, oom := p.prev.advance(now, r)
	drops := p.drops.Swap(0)
	if first {
		return 0, breaker.Trip{}, false // a baseline; no interval to judge yet
	}
	p.last = breaker.Sample{CPUPercent: pct, MemoryBytes: r.RSS, FloodEvents: drops, OOMKills: oom}
	if !observe {
		return pct, breaker.Trip{}, false
	}
	trip, ok := p.br.Observe(p.last)
	return pct, trip, ok
}

// PluginStatus is one plugin's governance state.
type PluginStatus struct {
	Name    string         `json:"name"`
	Breaker breaker.Status `json:"breaker"`
	// PID is the watched process, 0 when none is attached; Source says how
	// it is read ("cgroup" or "procstat").
	PID    int    `json:"pid,omitempty"`
	Source string `json:"source,omitempty"`
	// Last is the last sample taken.
	Last breaker.Sample `json:"last"`
}

// Status returns a snapshot of the plugin.
func (p *Plugin) Status() PluginStatus {
	s := PluginStatus{Name: p.name, Breaker: p.br.Status()}
	p.mu.Lock()
	defer p.mu.Unlock()
	s.PID = p.pid
	if p.src != nil {
		s.Source = p.src.Kind()
	}
	s.Last = p.last
	return s
}

// Summary is a one-line breaker state for api.PluginStatus.Breaker and
// `vigilctl agents ls`: "closed", "half-open", or
// "open: cpu (cpu 23.1% >= 10% for 4 samples), retry in 27s".
func (s PluginStatus) Summary() string {
	b := s.Breaker
	switch {
	case b.State == breaker.Open && b.LastTrip != nil:
		return fmt.Sprintf("open: %s (%s), retry in %s", b.LastTrip.Reason, b.LastTrip.Detail, b.CooldownLeft.Round(time.Second))
	case b.State == breaker.HalfOpen && b.LastTrip != nil:
		return fmt.Sprintf("half-open after %s (trips: %d)", b.LastTrip.Reason, b.Trips)
	}
	return b.State.String()
}
