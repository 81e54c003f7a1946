package breaker

import (
	"testing"
	"time"
)

type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time          { return c.now }
func (c *fakeClock) Advance(d time.Duration) { c.now = c.now.Add(d) }

func newClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func normal(t *testing.T) Limits {
	t.Helper()
	l, err := Profile(ProfileNormal)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestTripAfterExactlyNSamples(t *testing.T) {
	over := map[Reason]Sample{
		ReasonCPU:    {CPUPercent: 10},         // at the limit counts ("at or above")
		ReasonMemory: {MemoryBytes: 300 << 20}, // over 200 MiB
		ReasonFlood:  {FloodEvents: 1},         // any refused event with flood_events 0
	}
	for _, n := range []int{1, 4, 7} {
		for reason, s := range over {
			t.Run(string(reason)+"/N="+string(rune('0'+n)), func(t *testing.T) {
				clock := newClock()
				l := normal(t)
				l.Samples = n
				b := New(l, clock)
				for i := 1; i < n; i++ {
					if _, tripped := b.Observe(s); tripped {
						t.Fatalf("tripped after %d samples, want %d", i, n)
					}
					clock.Advance(3 * time.Second)
				}
				trip, tripped := b.Observe(s)
				if !tripped {
					t.Fatalf("not tripped after %d samples", n)
				}
				if trip.Reason != reason || trip.From != Closed || trip.Cooldown != l.Cooldown {
					t.Errorf("trip = %+v, want reason %s from closed, cooldown %s", trip, reason, l.Cooldown)
				}
				if b.State() != Open {
					t.Errorf("state = %s, want open", b.State())
				}
			})
		}
	}
}

func TestUnderLimitSampleResetsCount(t *testing.T) {
	b := New(normal(t), newClock())
	hot, cool := Sample{CPUPercent: 50}, Sample{CPUPercent: 9.9}
	for _, s := range []Sample{hot, hot, hot, cool, hot, hot, hot} {
		if _, tripped := b.Observe(s); tripped {
			t.Fatal("tripped although no 4 consecutive samples were over the limit")
		}
	}
	if _, tripped := b.Observe(hot); !tripped {
		t.Fatal("4th consecutive hot sample did not trip")
	}
}

func TestOOMKillTripsAtOnce(t *testing.T) {
	b := New(normal(t), newClock())
	trip, tripped := b.Observe(Sample{OOMKills: 1})
	if !tripped || trip.Reason != ReasonOOMKill {
		t.Fatalf("trip = %+v, %v; want oom_kill", trip, tripped)
	}
	if _, again := b.Trip(ReasonOOMKill, "seen at exit"); again {
		t.Error("Trip on an open breaker reported a new trip")
	}
}

func TestCooldownDoublesToCap(t *testing.T) {
	clock := newClock()
	l := normal(t) // 15 s doubling to 600 s
	b := New(l, clock)
	want := []time.Duration{15, 30, 60, 120, 240, 480, 600, 600}
	for i, w := range want {
		w *= time.Second
		trip, tripped := b.Trip(ReasonCPU, "test")
		if !tripped || trip.Cooldown != w {
			t.Fatalf("trip %d: cooldown %s (tripped %v), want %s", i+1, trip.Cooldown, tripped, w)
		}
		if ok, retry := b.Allow(); ok || retry != w {
			t.Fatalf("trip %d: Allow = %v, %s; want false, %s", i+1, ok, retry, w)
		}
		clock.Advance(w - time.Second)
		if ok, retry := b.Allow(); ok || retry != time.Second {
			t.Fatalf("trip %d: 1s before the end: Allow = %v, %s", i+1, ok, retry)
		}
		clock.Advance(time.Second)
		if ok, _ := b.Allow(); !ok {
			t.Fatalf("trip %d: Allow after cooldown = false", i+1)
		}
		if b.State() != HalfOpen {
			t.Fatalf("trip %d: state %s, want half-open", i+1, b.State())
		}
	}
	if got := b.Status().Trips; got != len(want) {
		t.Errorf("Trips = %d, want %d", got, len(want))
	}
}

func TestHalfOpen(t *testing.T) {
	tests := []struct {
		name      string
		samples   []Sample
		wantState State
		wantTrip  bool
	}{
		{name: "healthy window closes it", samples: repeat(Sample{CPUPercent: 1}, 20), wantState: Closed},
		{name: "window not yet over stays half-open", samples: repeat(Sample{CPUPercent: 1}, 19), wantState: HalfOpen},
		{name: "over the limit again reopens with a doubled cooldown", samples: repeat(Sample{CPUPercent: 40}, 4), wantState: Open, wantTrip: true},
		{name: "an over-limit sample at the window's end delays closing",
			samples: append(repeat(Sample{CPUPercent: 1}, 19), Sample{CPUPercent: 40}), wantState: HalfOpen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newClock()
			l := normal(t) // healthy window 60 s = 20 samples of 3 s
			b := New(l, clock)
			b.Trip(ReasonCPU, "first")
			clock.Advance(l.Cooldown)
			if ok, _ := b.Allow(); !ok {
				t.Fatal("Allow after cooldown = false")
			}
			var tripped bool
			var trip Trip
			for _, s := range tt.samples {
				clock.Advance(3 * time.Second)
				if tr, ok := b.Observe(s); ok {
					trip, tripped = tr, true
				}
			}
			if b.State() != tt.wantState || tripped != tt.wantTrip {
				t.Fatalf("state %s tripped %v, want %s %v", b.State(), tripped, tt.wantState, tt.wantTrip)
			}
			if tripped && (trip.From != HalfOpen || trip.Cooldown != 2*l.Cooldown) {
				t.Errorf("trip = %+v, want from half-open with cooldown %s", trip, 2*l.Cooldown)
			}
		})
	}
}

func TestForgetAfterResetsCooldown(t *testing.T) {
	clock := newClock()
	l := normal(t)
	b := New(l, clock)
	for range 3 { // 15, 30, 60
		b.Trip(ReasonCPU, "x")
		clock.Advance(l.MaxCooldown)
		b.Allow()
		clock.Advance(l.HealthyWindow)
		b.Observe(Sample{})
	}
	if b.State() != Closed {
		t.Fatalf("state %s, want closed", b.State())
	}
	if trip, _ := b.Trip(ReasonCPU, "soon after"); trip.Cooldown != 120*time.Second {
		t.Fatalf("trip soon after closing: cooldown %s, want 120s", trip.Cooldown)
	}
	clock.Advance(l.MaxCooldown)
	b.Allow()
	clock.Advance(l.HealthyWindow)
	b.Observe(Sample{})
	clock.Advance(l.ForgetAfter)
	if trip, _ := b.Trip(ReasonCPU, "much later"); trip.Cooldown != l.Cooldown {
		t.Fatalf("trip after forget_after: cooldown %s, want %s", trip.Cooldown, l.Cooldown)
	}
}

func TestOpenIgnoresSamples(t *testing.T) {
	b := New(normal(t), newClock())
	b.Trip(ReasonFlood, "x")
	for range 10 {
		if _, tripped := b.Observe(Sample{CPUPercent: 100, OOMKills: 1}); tripped {
			t.Fatal("an open breaker tripped again")
		}
	}
	st := b.Status()
	if st.Trips != 1 || st.ByReason[ReasonFlood] != 1 || st.LastTrip == nil || st.LastTrip.Reason != ReasonFlood || st.CooldownLeft != 15*time.Second {
		t.Fatalf("status = %+v", st)
	}
	if len(b.History()) != 1 {
		t.Fatalf("history has %d trips, want 1", len(b.History()))
	}
}

func repeat(s Sample, n int) []Sample {
	out := make([]Sample, n)
	for i := range out {
		out[i] = s
	}
	return out
}
