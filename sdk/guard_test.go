package sdk_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"

	"github.com/vigil-hids/vigil/internal/syncbuf"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/sdktest"
)

// counterEmitter is an sdk.Emitter that only keeps counters: the Guard
// uses nothing else, and the real batcher is not constructible outside sdk.
type counterEmitter struct {
	mu       sync.Mutex
	counters map[string]*sdk.Counter
}

func (e *counterEmitter) Emit(*sdk.Event) error { return nil }

func (e *counterEmitter) Counter(name string) *sdk.Counter {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.counters == nil {
		e.counters = map[string]*sdk.Counter{}
	}
	c, ok := e.counters[name]
	if !ok {
		c = &sdk.Counter{}
		e.counters[name] = c
	}
	return c
}

func (e *counterEmitter) get(name string) uint64 { return e.Counter(name).Load() }

func TestGuardRestartsPanickingWorker(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs syncbuf.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logs, JSONFormat: true})
	em := &counterEmitter{}
	clock := sdktest.NewFakeClock(time.Unix(0, 0))
	g := sdk.NewGuard(ctx, log, em, sdk.GuardOptions{Seed: "test", Initial: time.Second, Max: 8 * time.Second, Clock: clock})

	var runs atomic.Int32
	g.Go("sampler", func(ctx context.Context) error {
		if runs.Add(1) <= 5 {
			var m map[string]int
			m["boom"]++ // nil map write: a real runtime panic
		}
		return nil
	})
	g.Wait()

	if got := runs.Load(); got != 6 {
		t.Errorf("worker ran %d times, want 6 (5 panics, then a clean return)", got)
	}
	for name, want := range map[string]uint64{
		sdk.CounterPanics:              5,
		sdk.CounterPanics + ".sampler": 5,
		sdk.CounterRestarts:            5,
	} {
		if got := em.get(name); got != want {
			t.Errorf("counter %s = %d, want %d", name, got, want)
		}
	}
	sleeps := clock.Sleeps()
	if len(sleeps) != 5 {
		t.Fatalf("slept %d times, want 5: %v", len(sleeps), sleeps)
	}
	bases := []time.Duration{1, 2, 4, 8, 8}
	for i, d := range sleeps {
		base := bases[i] * time.Second
		if d > base || d < base*8/10 {
			t.Errorf("restart delay %d = %v, want within 20%% below %v", i, d, base)
		}
	}
	out := logs.String()
	for _, want := range []string{"worker panicked, restarting", `"worker":"sampler"`, "assignment to entry in nil map", "guard_test.go"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

func TestGuardStopsRestartingWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	em := &counterEmitter{}
	clock := sdktest.NewFakeClock(time.Unix(0, 0))
	clock.OnSleep(func(n int) {
		if n == 3 {
			cancel()
		}
	})
	g := sdk.NewGuard(ctx, nil, em, sdk.GuardOptions{Clock: clock})
	var runs atomic.Int32
	g.Go("failing", func(ctx context.Context) error {
		runs.Add(1)
		return errors.New("cannot open socket")
	})
	g.Wait()
	if got := runs.Load(); got != 3 {
		t.Errorf("worker ran %d times, want 3", got)
	}
	if got := em.get(sdk.CounterPanics); got != 0 {
		t.Errorf("errors counted as %d panics", got)
	}
	if got := em.get(sdk.CounterRestarts); got != 3 {
		t.Errorf("restarts = %d, want 3", got)
	}

	started := false
	g.Go("late", func(context.Context) error { started = true; return nil })
	g.Wait()
	if started {
		t.Error("Go started a worker after the context ended")
	}
}

func TestGuardWorkerEndingWithContextIsNotRestarted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	clock := sdktest.NewFakeClock(time.Unix(0, 0))
	g := sdk.NewGuard(ctx, nil, nil, sdk.GuardOptions{Clock: clock})
	var runs atomic.Int32
	for _, name := range []string{"a", "b", "c"} {
		g.Go(name, func(ctx context.Context) error {
			runs.Add(1)
			<-ctx.Done()
			return ctx.Err()
		})
	}
	cancel()
	g.Wait()
	if got := runs.Load(); got != 3 {
		t.Errorf("workers ran %d times, want 3", got)
	}
	if got := clock.Sleeps(); len(got) != 0 {
		t.Errorf("guard waited %v to restart workers that ended with the context", got)
	}
}

func TestGuardResetsBackoffAfterStableRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clock := sdktest.NewFakeClock(time.Unix(0, 0))
	clock.OnSleep(func(n int) {
		if n == 6 {
			cancel()
		}
	})
	g := sdk.NewGuard(ctx, nil, nil, sdk.GuardOptions{Initial: time.Second, Max: time.Minute, StableAfter: 10 * time.Minute, Clock: clock})
	g.Go("long-lived", func(ctx context.Context) error {
		clock.Advance(time.Hour) // ran an hour, then failed
		return errors.New("lost connection")
	})
	g.Wait()
	for i, d := range clock.Sleeps() {
		if d > time.Second {
			t.Errorf("restart %d after a stable run waited %v, want at most Initial (1s)", i, d)
		}
	}
}

func TestGuardNestedGo(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g := sdk.NewGuard(ctx, nil, nil, sdk.GuardOptions{})
	var inner atomic.Bool
	g.Go("outer", func(ctx context.Context) error {
		g.Go("inner", func(context.Context) error { inner.Store(true); return nil })
		return nil
	})
	g.Wait()
	if !inner.Load() {
		t.Error("Wait returned before the worker started by a worker ran")
	}
}
