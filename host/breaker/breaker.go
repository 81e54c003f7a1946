// Package breaker is the circuit breaker that guards one plugin (or the
// whole agent) against using more of its server than it may.
//
// A Breaker is a pure state machine over samples and an injected clock; it
// starts no goroutines and never sleeps. The governor feeds it one Sample
// per interval:
//
//	closed ──N consecutive samples over one limit──▶ open (plugin stopped)
//	open ──cooldown elapsed, Allow──▶ half-open (plugin restarted under watch)
//	half-open ──HealthyWindow without a trip──▶ closed
//	half-open ──N samples over a limit──▶ open, cooldown doubled
//
// The cooldown starts at Limits.Cooldown and doubles on each trip up to
// Limits.MaxCooldown (osquery's watchdog grows its respawn delay to 600 s
// the same way); after ForgetAfter closed, the next trip starts again from
// Cooldown. An OOM kill trips at once: the process is already dead.
//
// The limits live in one table with a normal and a strict profile (see
// Profile); Overrides change them per plugin.
package breaker

import (
	"fmt"
	"sync"
	"time"
)

// State is a breaker's state.
type State int

// Breaker states.
const (
	Closed State = iota
	Open
	HalfOpen
)

func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// MarshalText writes the state's name.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Reason says which limit tripped a breaker.
type Reason string

// Trip reasons.
const (
	ReasonCPU     Reason = "cpu"
	ReasonMemory  Reason = "memory"
	ReasonFlood   Reason = "event_flood"
	ReasonOOMKill Reason = "oom_kill"
	// ReasonAgentCPU is the agent-wide rule: host and plugins together at
	// or above their CPU limit.
	ReasonAgentCPU Reason = "agent_cpu"
)

// Clock is the source of time; tests inject a fake one.
type Clock interface{ Now() time.Time }

// Sample is one interval's reading of a plugin.
type Sample struct {
	// CPUPercent is the CPU used over the interval in percent of one core.
	CPUPercent float64
	// MemoryBytes is the resident memory at the end of the interval.
	MemoryBytes uint64
	// FloodEvents is how many events the host's rate limiter refused from
	// the plugin during the interval.
	FloodEvents uint64
	// OOMKills is how many processes the kernel OOM-killed in the
	// plugin's cgroup during the interval.
	OOMKills uint64
}

// Trip records one trip.
type Trip struct {
	At     time.Time `json:"at"`
	Reason Reason    `json:"reason"`
	// Detail says what was measured, e.g. "cpu 23.1% >= 10% for 4 samples".
	Detail string `json:"detail"`
	// From is the state the breaker tripped from.
	From State `json:"from"`
	// Cooldown is how long the plugin stays stopped for this trip.
	Cooldown time.Duration `json:"cooldown"`
}

// Status is a snapshot of a breaker for status output and the heartbeat.
type Status struct {
	State State `json:"state"`
	// Trips counts every trip since the breaker was made; ByReason splits
	// the count by reason.
	Trips    int            `json:"trips"`
	ByReason map[Reason]int `json:"by_reason,omitempty"`
	LastTrip *Trip          `json:"last_trip,omitempty"`
	// CooldownLeft is how long until an open breaker lets a restart in.
	CooldownLeft time.Duration `json:"cooldown_left,omitempty"`
	// NextCooldown is how long the next trip would stop the plugin.
	NextCooldown time.Duration `json:"next_cooldown"`
}

// historyLen bounds the trips kept for History.
const historyLen = 16

const (
	overCPU = iota
	overMemory
	overFlood
	overKinds
)

// Breaker is one plugin's circuit breaker. It is safe for concurrent use.
type Breaker struct {
	clock Clock

	mu         sync.Mutex
	limits     Limits
	state      State
	over       [overKinds]int
	peak       [overKinds]float64
	level      int // trips since the cooldown was last forgotten
	openUntil  time.Time
	halfOpenAt time.Time
	closedAt   time.Time
	trips      int
	byReason   map[Reason]int
	history    []Trip
}

// New returns a closed breaker.
func New(l Limits, clock Clock) *Breaker {
	return &Breaker{limits: l, clock: clock, closedAt: clock.Now()}
}

// SetLimits replaces the limits; the state and cooldown level are kept, the
// consecutive-sample counts restart.
func (b *Breaker) SetLimits(l Limits) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.limits = l
	b.resetCounts()
}

// Limits returns the limits in force.
func (b *Breaker) Limits() Limits {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.limits
}

// Observe feeds one sample. It returns the trip and true when this sample
// opened the breaker. Samples are ignored while the breaker is open.
func (b *Breaker) Observe(s Sample) (Trip, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == Open {
		return Trip{}, false
	}
	if s.OOMKills > 0 {
		return b.trip(ReasonOOMKill, fmt.Sprintf("%d process(es) OOM-killed in the plugin's cgroup", s.OOMKills)), true
	}
	l := b.limits
	b.count(overCPU, s.CPUPercent >= l.CPUPercent, s.CPUPercent)
	b.count(overMemory, s.MemoryBytes >= l.MemoryBytes, float64(s.MemoryBytes))
	b.count(overFlood, s.FloodEvents > l.FloodEvents, float64(s.FloodEvents))
	n := max(l.Samples, 1)
	switch {
	case b.over[overCPU] >= n:
		return b.trip(ReasonCPU, fmt.Sprintf("cpu %.1f%% >= %g%% for %d samples (peak %.1f%%)",
			s.CPUPercent, l.CPUPercent, n, b.peak[overCPU])), true
	case b.over[overMemory] >= n:
		return b.trip(ReasonMemory, fmt.Sprintf("memory %d MiB >= %d MiB for %d samples",
			s.MemoryBytes>>20, l.MemoryBytes>>20, n)), true
	case b.over[overFlood] >= n:
		return b.trip(ReasonFlood, fmt.Sprintf("rate-limited for %d samples in a row (%d events refused in the last, limit %d)",
			n, s.FloodEvents, l.FloodEvents)), true
	}
	if b.state == HalfOpen && b.healthy() && b.clock.Now().Sub(b.halfOpenAt) >= l.HealthyWindow {
		b.state = Closed
		b.closedAt = b.clock.Now()
	}
	return Trip{}, false
}

func (b *Breaker) count(kind int, over bool, v float64) {
	if !over {
		b.over[kind] = 0
		b.peak[kind] = 0
		return
	}
	b.over[kind]++
	b.peak[kind] = max(b.peak[kind], v)
}

func (b *Breaker) healthy() bool {
	for _, n := range b.over {
		if n > 0 {
			return false
		}
	}
	return true
}

// Trip opens the breaker at once for a reason found outside the samples
// (the agent-wide rule, an OOM kill seen at exit). It returns false when the
// breaker was already open.
func (b *Breaker) Trip(reason Reason, detail string) (Trip, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == Open {
		return Trip{}, false
	}
	return b.trip(reason, detail), true
}

func (b *Breaker) trip(reason Reason, detail string) Trip {
	now := b.clock.Now()
	if b.state == Closed && b.limits.ForgetAfter > 0 && now.Sub(b.closedAt) >= b.limits.ForgetAfter {
		b.level = 0
	}
	t := Trip{At: now, Reason: reason, Detail: detail, From: b.state, Cooldown: b.cooldown(b.level)}
	b.level++
	b.trips++
	if b.byReason == nil {
		b.byReason = map[Reason]int{}
	}
	b.byReason[reason]++
	b.state = Open
	b.openUntil = now.Add(t.Cooldown)
	b.resetCounts()
	if len(b.history) == historyLen {
		copy(b.history, b.history[1:])
		b.history = b.history[:historyLen-1]
	}
	b.history = append(b.history, t)
	return t
}

// cooldown returns Cooldown doubled level times, capped at MaxCooldown.
func (b *Breaker) cooldown(level int) time.Duration {
	d, limit := b.limits.Cooldown, max(b.limits.MaxCooldown, b.limits.Cooldown)
	for range level {
		if d >= limit/2 {
			return limit
		}
		d *= 2
	}
	return min(d, limit)
}

func (b *Breaker) resetCounts() {
	b.over = [overKinds]int{}
	b.peak = [overKinds]float64{}
}

// Allow reports whether the plugin may (re)start now. An open breaker whose
// cooldown has elapsed turns half-open and allows it; otherwise Allow says
// how long to wait.
func (b *Breaker) Allow() (ok bool, retryAfter time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != Open {
		return true, 0
	}
	now := b.clock.Now()
	if left := b.openUntil.Sub(now); left > 0 {
		return false, left
	}
	b.state = HalfOpen
	b.halfOpenAt = now
	b.resetCounts()
	return true, 0
}

// State returns the current state.
func (b *Breaker) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

// Status returns a snapshot.
func (b *Breaker) Status() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Status{State: b.state, Trips: b.trips, NextCooldown: b.cooldown(b.level)}
	if len(b.byReason) > 0 {
		s.ByReason = make(map[Reason]int, len(b.byReason))
		for r, n := range b.byReason {
			s.ByReason[r] = n
		}
	}
	if n := len(b.history); n > 0 {
		t := b.history[n-1]
		s.LastTrip = &t
	}
	if b.state == Open {
		s.CooldownLeft = max(b.openUntil.Sub(b.clock.Now()), 0)
	}
	return s
}

// History returns the most recent trips, oldest first.
func (b *Breaker) History() []Trip {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Trip(nil), b.history...)
}
