package governor

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/host/breaker"
	"github.com/vigil-hids/vigil/host/cgroup"
)

// spawner runs functions on one goroutine locked to its OS thread, as the
// host's spawner does.
type spawner chan func()

func newSpawner(t testing.TB) spawner {
	s := make(spawner)
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		for f := range s {
			f()
		}
	}()
	t.Cleanup(func() { close(s); <-done })
	return s
}

// start starts the test binary in a child mode inside group.
func (s spawner) start(t testing.TB, group *cgroup.Group, mode string, opts ...func(*exec.Cmd)) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	for _, o := range opts {
		o(cmd)
	}
	errc := make(chan error)
	s <- func() {
		restore, err := group.PrepareSpawn(cmd)
		if err != nil {
			errc <- err
			return
		}
		errc <- errors.Join(cmd.Start(), restore())
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := group.Verify(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	return cmd
}

func newCgroups(t testing.TB) *cgroup.Manager {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups (CI runs these as root)")
	}
	m, err := cgroup.NewManager(cgroup.Config{Parent: fmt.Sprintf("vigil-gov-test-%d", os.Getpid())}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.RemoveAll(); err != nil {
			t.Error(err)
		}
	})
	return m
}

// TestCgroupCPUHog runs a busy loop in a plugin cgroup sized from the normal
// profile (breaker at 10%, quota at 20% of a core) under a real-clock
// governor: the kernel holds it at its quota, and the breaker trips on cpu.
func TestCgroupCPUHog(t *testing.T) {
	m := newCgroups(t)
	l := limits(t, breaker.ProfileNormal)
	l.Samples = 4
	group, err := m.Create("cpuhog", CgroupLimits(l))
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Config{Interval: 250 * time.Millisecond, AgentCPUPercent: 800}, realClock{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tripped := make(chan breaker.Trip, 1)
	g.OnTrip(func(_ string, tr breaker.Trip) {
		group.Kill()
		tripped <- tr
	})
	p := g.Add("cpuhog", l)
	cmd := newSpawner(t).start(t, group, "spin")
	t0 := time.Now() // before the first read: a delay after it only lowers the figure
	before, err := group.Stats()
	if err != nil {
		t.Fatal(err)
	}
	p.Attach(cmd.Process.Pid, group)
	if err := g.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var tr breaker.Trip
	select {
	case tr = <-tripped:
	case <-time.After(30 * time.Second):
		t.Fatalf("no trip; status %+v", g.Status())
	}
	after, err := group.Stats()
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(t0)
	usage := 100 * float64(after.CPU-before.CPU) / float64(elapsed)
	t.Logf("hog: %.1f%% of a core under a %g%% quota; tripped after %s (%s)", usage, l.QuotaCPUPercent, elapsed.Round(time.Millisecond), tr.Detail)
	if tr.Reason != breaker.ReasonCPU {
		t.Errorf("reason %s, want cpu", tr.Reason)
	}
	// The window (about 1 s) cuts the CFS periods (100 ms, see
	// host/cgroup) at both ends, each of which may hold its full quota:
	// at most two periods' worth more than the quota over the window.
	const period = 100 * time.Millisecond
	if limit := l.QuotaCPUPercent * float64(elapsed+2*period) / float64(elapsed); usage > limit {
		t.Errorf("usage %.1f%% above the %g%% quota (%.1f%% with two periods cut by the %s window)", usage, l.QuotaCPUPercent, limit, elapsed.Round(time.Millisecond))
	}
	cmd.Wait()
	p.Detach()
	if err := group.Delete(); err != nil {
		t.Fatal(err)
	}
}

// TestCgroupMemoryHog: a plugin that leaks is OOM-killed inside its own
// cgroup while the host (this test) runs on; Detach sees the OOM kill and
// trips the breaker; the restart waits for the cooldown, then runs.
func TestCgroupMemoryHog(t *testing.T) {
	m := newCgroups(t)
	l := limits(t, breaker.ProfileNormal)
	l.MemoryBytes, l.QuotaMemoryBytes = 16<<20, 32<<20
	group, err := m.Create("memhog", CgroupLimits(l))
	if err != nil {
		t.Fatal(err)
	}
	g, clock, rec := newGov(t, Config{})
	p := g.Add("memhog", l)
	sp := newSpawner(t)
	// The hog grows once its group is verified and the baseline taken
	// (closing w): an OOM kill before the baseline sample would be in the
	// baseline, and on v1 a dead process shows in the root groups.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := sp.start(t, group, "hog", func(c *exec.Cmd) { c.Stdin = r })
	r.Close()
	p.Attach(cmd.Process.Pid, group)
	g.Sample() // baseline
	w.Close()
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != -1 {
		t.Fatalf("hog exit: %v, want killed by a signal", err)
	}
	p.Detach()
	if len(rec.trips) != 1 || rec.reason[0] != breaker.ReasonOOMKill {
		t.Fatalf("trips %v %v, want oom_kill", rec.trips, rec.reason)
	}
	if ok, wait := p.Allow(); ok || wait != l.Cooldown {
		t.Fatalf("Allow right after the OOM kill = %v, %s; want false, %s", ok, wait, l.Cooldown)
	}
	clock.Advance(l.Cooldown)
	if ok, _ := p.Allow(); !ok {
		t.Fatal("not allowed after the cooldown")
	}
	again := sp.start(t, group, "sleep")
	p.Attach(again.Process.Pid, group)
	g.Sample()
	if st := p.Status(); st.Breaker.State != breaker.HalfOpen || st.Source != "cgroup" {
		t.Errorf("status after the restart: %+v", st)
	}
	if err := group.Delete(); err != nil {
		t.Fatal(err)
	}
}
