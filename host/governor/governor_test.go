package governor

import (
	"context"
	"errors"
	"io"
	"math"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigil-hids/vigil/host/breaker"
)

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "spin":
		for {
		}
	case "hog":
		// Grow only once the test closes stdin (it has taken its baseline).
		_, _ = io.Copy(io.Discard, os.Stdin)
		var keep [][]byte
		for range 4096 {
			b := make([]byte, 1<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			keep = append(keep, b)
		}
		os.Exit(3)
	case "sleep":
		time.Sleep(time.Hour)
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fakeSource is a process whose CPU use runs at pct percent of one core of
// the fake clock's time.
type fakeSource struct {
	clock *fakeClock
	mu    sync.Mutex
	pct   float64
	at    time.Time
	cpu   time.Duration
	rss   uint64
	oom   uint64
}

func newSource(c *fakeClock, pct float64) *fakeSource {
	return &fakeSource{clock: c, pct: pct, at: c.Now()}
}

func (s *fakeSource) Kind() string { return "fake" }

func (s *fakeSource) Read() (Reading, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advance()
	return Reading{CPU: s.cpu, RSS: s.rss, OOMKills: s.oom}, nil
}

func (s *fakeSource) advance() {
	now := s.clock.Now()
	s.cpu += time.Duration(float64(now.Sub(s.at)) * s.pct / 100)
	s.at = now
}

// set changes the CPU rate from now on.
func (s *fakeSource) set(pct float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advance()
	s.pct = pct
}

type recorder struct {
	mu     sync.Mutex
	trips  []string
	at     []time.Time
	agent  []bool
	clock  *fakeClock
	reason []breaker.Reason
}

func (r *recorder) onTrip(plugin string, t breaker.Trip) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.trips = append(r.trips, plugin)
	r.reason = append(r.reason, t.Reason)
	r.at = append(r.at, t.At)
}

func (r *recorder) onAgent(stopped bool, _ breaker.Trip) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.agent = append(r.agent, stopped)
}

func newGov(t testing.TB, cfg Config) (*Governor, *fakeClock, *recorder) {
	t.Helper()
	clock := newClock()
	g, err := New(cfg, clock, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{clock: clock}
	g.OnTrip(rec.onTrip)
	g.OnAgentTrip(rec.onAgent)
	return g, clock, rec
}

func limits(t testing.TB, profile string) breaker.Limits {
	t.Helper()
	l, err := breaker.Profile(profile)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestTimeToTrip checks that a plugin that starts spinning at any moment
// between two samples trips N × interval later, give or take one interval:
// the sample whose interval the spin started in may or may not count.
func TestTimeToTrip(t *testing.T) {
	const interval = 3 * time.Second
	for _, offset := range []time.Duration{0, 100 * time.Millisecond, 1500 * time.Millisecond, 2900 * time.Millisecond} {
		t.Run(offset.String(), func(t *testing.T) {
			g, clock, rec := newGov(t, Config{Interval: interval, AgentCPUPercent: 800})
			l := limits(t, breaker.ProfileNormal)
			src := newSource(clock, 1)
			g.Add("hog", l).AttachSource(1, src)
			ttt := timeToTrip(g, clock, rec, src, offset, interval)
			want := time.Duration(l.Samples) * interval
			t.Logf("spin started %s after a sample: tripped %s later (N × interval = %s)", offset, ttt, want)
			if ttt < want-interval || ttt > want+interval {
				t.Errorf("time to trip %s, want %s ± %s", ttt, want, interval)
			}
			if rec.reason[0] != breaker.ReasonCPU {
				t.Errorf("reason %s, want cpu", rec.reason[0])
			}
		})
	}
}

// timeToTrip samples every interval, makes src spin at 100% offset after
// one sample, and returns how long after that the breaker tripped.
func timeToTrip(g *Governor, clock *fakeClock, rec *recorder, src *fakeSource, offset, interval time.Duration) time.Duration {
	g.Sample() // baseline
	clock.Advance(offset)
	src.set(100)
	start := clock.Now()
	clock.Advance(interval - offset)
	for range 100 {
		g.Sample()
		if len(rec.trips) > 0 {
			return rec.at[0].Sub(start)
		}
		clock.Advance(interval)
	}
	return -1
}

func TestAgentWideRuleStopsAllAndRecovers(t *testing.T) {
	const interval = 3 * time.Second
	g, clock, rec := newGov(t, Config{Interval: interval})
	host := newSource(clock, 1)
	g.mu.Lock()
	g.host = host
	g.mu.Unlock()
	var srcs []*fakeSource
	for _, name := range []string{"procmon", "netmon", "vulnscan"} {
		s := newSource(clock, 2) // each far under its own 10%, together 7% with the host
		srcs = append(srcs, s)
		g.Add(name, limits(t, breaker.ProfileNormal)).AttachSource(1, s)
	}
	g.Sample() // baseline
	for i := 1; i <= 4; i++ {
		clock.Advance(interval)
		g.Sample()
		if got := len(rec.agent); (i < 4 && got != 0) || (i == 4 && got != 1) {
			t.Fatalf("after %d samples: %d agent trips", i, got)
		}
	}
	if !rec.agent[0] || len(rec.trips) != 0 {
		t.Fatalf("agent callbacks %v, plugin trips %v: want one stop and no plugin trip", rec.agent, rec.trips)
	}
	st := g.Status()
	if st.Agent.State != breaker.Open || !strings.Contains(st.AgentReason, "top plugin") || math.Abs(st.AgentCPUPercent-7) > 0.01 {
		t.Fatalf("status = %+v", st)
	}
	for _, name := range g.Names() {
		if ok, wait := g.Plugin(name).Allow(); ok || wait != 4*interval {
			t.Errorf("%s: Allow = %v, %s during the agent cooldown, want false, %s", name, ok, wait, 4*interval)
		}
		g.Plugin(name).Detach() // the supervisor stopped it
	}
	// The host alone is quiet; after one check window the plugins may come back.
	clock.Advance(4 * interval)
	g.Sample()
	if len(rec.agent) != 2 || rec.agent[1] {
		t.Fatalf("agent callbacks %v, want a resume", rec.agent)
	}
	for _, name := range g.Names() {
		if ok, _ := g.Plugin(name).Allow(); !ok {
			t.Errorf("%s not allowed after the agent cooldown", name)
		}
	}
	if g.Status().Agent.State != breaker.HalfOpen {
		t.Errorf("agent state %s, want half-open", g.Status().Agent.State)
	}
}

func TestFloodTripsAfterRateLimiting(t *testing.T) {
	tests := []struct {
		name     string
		drops    []uint64 // per interval
		wantTrip bool
	}{
		{name: "refused in 4 intervals in a row", drops: []uint64{10, 500, 3, 7}, wantTrip: true},
		{name: "bursts between quiet intervals", drops: []uint64{10, 500, 0, 7, 9, 0, 1000, 1}, wantTrip: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, clock, rec := newGov(t, Config{})
			p := g.Add("procmon", limits(t, breaker.ProfileNormal))
			p.AttachSource(1, newSource(clock, 1))
			g.Sample()
			for _, d := range tt.drops {
				clock.Advance(g.Config().Interval)
				p.ReportDrops(d)
				g.Sample()
			}
			if got := len(rec.trips) == 1; got != tt.wantTrip {
				t.Fatalf("tripped %v, want %v", got, tt.wantTrip)
			}
			if tt.wantTrip && rec.reason[0] != breaker.ReasonFlood {
				t.Errorf("reason %s, want event_flood", rec.reason[0])
			}
		})
	}
}

func TestMemoryTrip(t *testing.T) {
	g, clock, rec := newGov(t, Config{})
	src := newSource(clock, 1)
	src.rss = 250 << 20
	g.Add("vulnscan", limits(t, breaker.ProfileNormal)).AttachSource(1, src)
	for range 5 {
		g.Sample()
		clock.Advance(g.Config().Interval)
	}
	if len(rec.trips) != 1 || rec.reason[0] != breaker.ReasonMemory {
		t.Fatalf("trips %v %v, want one memory trip", rec.trips, rec.reason)
	}
}

// TestOOMKillSeenAtDetach: the kernel killed the plugin in its group; the
// supervisor detaches it, the governor reads the group one last time and
// trips, so the restart waits for the cooldown and then recovers.
func TestOOMKillSeenAtDetach(t *testing.T) {
	g, clock, rec := newGov(t, Config{})
	l := limits(t, breaker.ProfileNormal)
	p := g.Add("procmon", l)
	src := newSource(clock, 1)
	p.AttachSource(1, src)
	g.Sample()
	src.oom = 1
	p.Detach()
	if len(rec.trips) != 1 || rec.reason[0] != breaker.ReasonOOMKill {
		t.Fatalf("trips %v %v, want oom_kill", rec.trips, rec.reason)
	}
	if ok, wait := p.Allow(); ok || wait != l.Cooldown {
		t.Fatalf("Allow = %v, %s; want false, %s", ok, wait, l.Cooldown)
	}
	clock.Advance(l.Cooldown)
	if ok, _ := p.Allow(); !ok {
		t.Fatal("not allowed after the cooldown")
	}
	// Restarted under watch and healthy for the window: closed again.
	p.AttachSource(2, newSource(clock, 1))
	for range int(l.HealthyWindow/g.Config().Interval) + 2 {
		g.Sample()
		clock.Advance(g.Config().Interval)
	}
	st := p.Status()
	if st.Breaker.State != breaker.Closed || st.Breaker.Trips != 1 || st.PID != 2 {
		t.Fatalf("status %+v, want closed after 1 trip", st)
	}
	if st.Summary() != "closed" {
		t.Errorf("Summary = %q", st.Summary())
	}
}

func TestCallbackPanicIsContained(t *testing.T) {
	g, clock, _ := newGov(t, Config{})
	g.OnTrip(func(string, breaker.Trip) { panic("supervisor bug") })
	g.Add("procmon", limits(t, breaker.ProfileNormal)).AttachSource(1, newSource(clock, 90))
	for range 5 {
		clock.Advance(g.Config().Interval)
		g.Sample()
	}
	if g.CallbackPanics() != 1 {
		t.Errorf("CallbackPanics = %d, want 1", g.CallbackPanics())
	}
	if g.Plugin("procmon").Status().Breaker.State != breaker.Open {
		t.Error("breaker not open after the trip whose callback panicked")
	}
}

func TestAddAgainKeepsState(t *testing.T) {
	g, clock, _ := newGov(t, Config{})
	p := g.Add("procmon", limits(t, breaker.ProfileNormal))
	p.AttachSource(1, newSource(clock, 50))
	for range 4 {
		clock.Advance(g.Config().Interval)
		g.Sample()
	}
	again := g.Add("procmon", limits(t, breaker.ProfileStrict))
	if again != p || p.Limits().CPUPercent != 5 || p.Status().Breaker.State != breaker.Open {
		t.Fatalf("Add again: same handle %v, limits %+v, state %s", again == p, p.Limits(), p.Status().Breaker.State)
	}
	g.Remove("procmon")
	if g.Plugin("procmon") != nil || len(g.Status().Plugins) != 0 {
		t.Fatal("plugin still registered after Remove")
	}
}

func TestSummary(t *testing.T) {
	g, clock, _ := newGov(t, Config{})
	p := g.Add("netmon", limits(t, breaker.ProfileStrict))
	p.AttachSource(1, newSource(clock, 50))
	for range 5 {
		g.Sample()
		clock.Advance(g.Config().Interval)
	}
	got := p.Status().Summary()
	if !strings.HasPrefix(got, "open: cpu (cpu 50.0% >= 5% for 4 samples") || !strings.HasSuffix(got, "retry in 27s") {
		t.Errorf("Summary = %q", got)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "defaults", cfg: Config{}},
		{name: "interval too short", cfg: Config{Interval: time.Millisecond}, want: "governor.interval must be between 100ms and 1m (got 1ms)"},
		{name: "unknown profile", cfg: Config{Profile: "lax"}, want: `governor.profile must be one of normal, strict (got "lax")`},
		{name: "agent samples", cfg: Config{AgentSamples: 1000}, want: "governor.agent_samples must be between 1 and 100 (got 1000)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, newClock(), nil)
			if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("New: %v, want %q", err, tt.want)
			}
		})
	}
}

// TestStartSamplesRealProcess runs the governor on the real clock over a real
// busy process read from /proc (no cgroup): its breaker trips.
func TestStartSamplesRealProcess(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=spin")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	g, err := New(Config{Interval: 100 * time.Millisecond, AgentCPUPercent: 800}, realClock{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := limits(t, breaker.ProfileNormal)
	l.CPUPercent, l.Samples = 2, 3
	tripped := make(chan breaker.Trip, 1)
	g.OnTrip(func(_ string, tr breaker.Trip) { tripped <- tr })
	g.Add("spinner", l).Attach(cmd.Process.Pid, nil)
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	<-g.Ready()
	select {
	case tr := <-tripped:
		if tr.Reason != breaker.ReasonCPU {
			t.Errorf("reason %s, want cpu", tr.Reason)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no trip; status %+v", g.Status())
	}
	if st := g.Status().Plugins[0]; st.Source != "procstat" || st.PID != cmd.Process.Pid {
		t.Errorf("status %+v", st)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if err := g.Start(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v", err)
	}
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

const childEnv = "VIGIL_GOVERNOR_TEST_CHILD"
