package procmon

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/plugins/procmon/cnproc"
)

// fakeKernelClock is a KernelClock a test can step. The real wall clock
// cannot be stepped by a test without stepping the whole machine's time
// (and every other test's with it).
type fakeKernelClock struct{ wall, mono, boot atomic.Int64 }

func (f *fakeKernelClock) read() (wall, mono, boot int64, ok bool) {
	return f.wall.Load(), f.mono.Load(), f.boot.Load(), true
}

// advance moves all three clocks on by d, as time passing does.
func (f *fakeKernelClock) advance(d time.Duration) {
	f.wall.Add(int64(d))
	f.mono.Add(int64(d))
	f.boot.Add(int64(d))
}

// TestEventTimesFollowClockSteps runs fork events through a worker while
// the fake wall clock runs on, and is stepped or not.
func TestEventTimesFollowClockSteps(t *testing.T) {
	const (
		wall0 = int64(1_790_000_000) * int64(time.Second) // a Unix time in 2026
		mono0 = int64(5000) * int64(time.Second)          // 5000 s of uptime
	)
	tests := []struct {
		name      string
		step      time.Duration
		wantSteps uint64
	}{
		{"no step", 0, 0},
		{"forward 1h", time.Hour, 1},
		{"back 1h", -time.Hour, 1},
		{"half a millisecond (tolerated)", 500 * time.Microsecond, 0},
		{"5ms", 5 * time.Millisecond, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &fakeKernelClock{}
			clk.wall.Store(wall0)
			clk.mono.Store(mono0)
			clk.boot.Store(mono0 + int64(time.Minute)) // a minute suspended once
			rec := &recorder{}
			cfg := DefaultConfig()
			cfg.Emit = []string{"fork"}
			m := &Monitor{cfg: cfg, deps: Deps{Emitter: rec, ProcRoot: "/proc"}, c: newCounters(rec), emit: cfg.emitMask(),
				det: newDetector(&cfg.Detections), table: newProcTable(cfg.ProcessTableSize)}
			m.clock = newWallClock(clk.read, m.c.clockSteps, nil)
			w := newWorker(m)
			fork := func(pid int32) {
				ts := clk.mono.Load() - int64(time.Millisecond) // the event happened 1 ms ago
				w.handle(&cnproc.Event{What: cnproc.Fork, PID: pid, TGID: pid, ParentTGID: 1, Timestamp: uint64(ts)})
			}
			// wantTime is the fake wall clock's time of the event 1 ms ago.
			wantTime := func() time.Time { return time.Unix(0, clk.wall.Load()-int64(time.Millisecond)) }

			var want []time.Time
			for i := range 3 { // before: times are the fake wall clock's
				clk.advance(400 * time.Millisecond)
				fork(int32(100 + i))
				want = append(want, wantTime())
			}
			clk.wall.Add(int64(tt.step))
			for i := range 3 { // after: the first event over a second after the last check follows the step
				clk.advance(600 * time.Millisecond)
				fork(int32(200 + i))
				want = append(want, wantTime())
			}
			rec.mu.Lock()
			got := rec.events
			rec.mu.Unlock()
			if len(got) != len(want) {
				t.Fatalf("%d events emitted, want %d", len(got), len(want))
			}
			tol := time.Duration(clockTolerance)
			for i, e := range got {
				if i == 3 && tt.step != 0 {
					// Less than a second of event time after the last
					// check: this one may still carry the old offset.
					continue
				}
				if d := e.time.Sub(want[i]); d < -tol || d > tol {
					t.Errorf("event %d (pid %d) at %v, want %v (off by %v)", i, e.pid, e.time, want[i], d)
				}
			}
			if got := m.c.clockSteps.Load(); got != tt.wantSteps {
				t.Errorf("clock_steps = %d, want %d", got, tt.wantSteps)
			}
			if got, want := m.clock.boot(), clk.wall.Load()-clk.boot.Load(); abs(got-want) > clockTolerance {
				t.Errorf("boot time %v, want %v", time.Unix(0, got), time.Unix(0, want))
			}
		})
	}
}

// TestWallClockSystem checks the system clocks: an event stamped now
// converts to about now.
func TestWallClockSystem(t *testing.T) {
	c := newWallClock(nil, nil, nil)
	_, mono, _, _ := readKernelClock()
	got := time.Unix(0, c.wall(mono+clockCheckEvery)) // due: re-takes the offsets
	if d := time.Until(got) - time.Second; d < -time.Minute || d > time.Minute {
		t.Errorf("now converts to %v, %v from the wall clock's now", got, d)
	}
	if c.steps.Load() != 0 {
		t.Errorf("clock_steps = %d on an unstepped clock", c.steps.Load())
	}
}

// BenchmarkForkEvent measures one fork event through a worker (the event
// path without /proc: table, fields, time conversion, emit), with event
// times that advance like a busy host's, so the offsets are re-taken once
// every second of event time.
func BenchmarkForkEvent(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Emit = []string{"fork"}
	em := &discard{}
	m := &Monitor{cfg: cfg, deps: Deps{Emitter: em, ProcRoot: "/proc"}, c: newCounters(em), emit: cfg.emitMask(),
		det: newDetector(&cfg.Detections), table: newProcTable(cfg.ProcessTableSize), clock: newWallClock(nil, nil, nil)}
	w := newWorker(m)
	_, mono, _, _ := readKernelClock()
	ev := cnproc.Event{What: cnproc.Fork, PID: 4242, TGID: 4242, ParentTGID: 1}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ev.Timestamp = uint64(mono + int64(i)*10_000) // 100,000 events/s
		w.handle(&ev)
	}
}
