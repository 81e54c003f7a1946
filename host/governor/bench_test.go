package governor

import (
	"flag"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/host/breaker"
	"github.com/vigil-hids/vigil/host/cgroup"
)

var realInterval = flag.Duration("governor.real-interval", DefaultInterval, "sampling interval of BenchmarkRealTimeToTrip")

// BenchmarkSampleCycle measures one governance cycle with three plugins:
// three real idle processes, each read through its cgroup ("cgroup") or
// through /proc ("procstat"), plus the host itself, and their breakers.
// core%@3s is the share of one core the governor costs at the default
// interval.
func BenchmarkSampleCycle(b *testing.B) {
	for _, mode := range []string{"cgroup", "procstat"} {
		b.Run(mode, func(b *testing.B) {
			var m *cgroup.Manager
			if mode == "cgroup" {
				m = newCgroups(b)
			}
			g, clock, _ := newGov(b, Config{AgentCPUPercent: 800})
			if err := g.SetHost(nil); err != nil {
				b.Fatal(err)
			}
			sp := newSpawner(b)
			for _, name := range []string{"procmon", "netmon", "vulnscan"} {
				var group *cgroup.Group
				if m != nil {
					var err error
					if group, err = m.Create(name, CgroupLimits(limits(b, breaker.ProfileNormal))); err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { group.Delete() })
				}
				proc := sp.startMaybe(b, group, "sleep")
				g.Add(name, limits(b, breaker.ProfileNormal)).Attach(proc.Pid, group)
			}
			g.Sample()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				clock.Advance(DefaultInterval)
				g.Sample()
			}
			perCycle := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(100*perCycle/float64(DefaultInterval.Nanoseconds()), "core%@3s")
			for _, p := range g.Status().Plugins {
				if p.Source != mode {
					b.Fatalf("%s read through %q, want %q", p.Name, p.Source, mode)
				}
			}
		})
	}
}

// BenchmarkTimeToTrip computes, with the injected clock, how long after a
// plugin starts spinning its breaker trips at the default interval and
// profile, for spins starting anywhere between two samples.
func BenchmarkTimeToTrip(b *testing.B) {
	var lo, hi time.Duration
	for b.Loop() {
		lo, hi = time.Hour, 0
		for off := time.Duration(0); off < DefaultInterval; off += 100 * time.Millisecond {
			g, clock, rec := newGov(b, Config{AgentCPUPercent: 800})
			src := newSource(clock, 1)
			g.Add("hog", limits(b, breaker.ProfileNormal)).AttachSource(1, src)
			ttt := timeToTrip(g, clock, rec, src, off, DefaultInterval)
			lo, hi = min(lo, ttt), max(hi, ttt)
		}
	}
	b.ReportMetric(lo.Seconds(), "min-s-to-trip")
	b.ReportMetric(hi.Seconds(), "max-s-to-trip")
	b.ReportMetric((time.Duration(limits(b, breaker.ProfileNormal).Samples) * DefaultInterval).Seconds(), "N×interval-s")
}

// BenchmarkRealTimeToTrip measures on the real clock how long a real busy
// process in a cgroup sized from the normal profile runs before its breaker
// trips (-governor.real-interval sets the interval; run with -benchtime=1x).
func BenchmarkRealTimeToTrip(b *testing.B) {
	m := newCgroups(b)
	l := limits(b, breaker.ProfileNormal)
	var total time.Duration
	for i := 0; b.Loop(); i++ {
		group, err := m.Create("ttt", CgroupLimits(l))
		if err != nil {
			b.Fatal(err)
		}
		g, err := New(Config{Interval: *realInterval, AgentCPUPercent: 800}, realClock{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		tripped := make(chan time.Time, 1)
		g.OnTrip(func(string, breaker.Trip) { tripped <- time.Now() })
		p := g.Add("ttt", l)
		if err := g.Start(b.Context()); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		cmd := newSpawner(b).start(b, group, "spin")
		p.Attach(cmd.Process.Pid, group)
		at := <-tripped
		total += at.Sub(start)
		g.Close()
		group.Kill()
		cmd.Wait()
		p.Detach()
		if err := group.Delete(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric((total / time.Duration(b.N)).Seconds(), "s-to-trip")
	b.ReportMetric((time.Duration(l.Samples) * *realInterval).Seconds(), "N×interval-s")
}

// startMaybe starts a child in group, or unconfined when group is nil.
func (s spawner) startMaybe(t testing.TB, group *cgroup.Group, mode string) *os.Process {
	if group != nil {
		return s.start(t, group, mode).Process
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process
}
