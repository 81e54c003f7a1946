package sdk

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	hclog "github.com/hashicorp/go-hclog"
)

// Guard owns a plugin's worker goroutines. A worker that panics is not
// allowed to take the plugin process down with it: Guard recovers the panic,
// logs it with its stack, counts it, and starts the worker again after a
// backoff, until the Guard's context is done. Wait waits for every goroutine
// the Guard started.
//
// A plugin's Run typically reads:
//
//	g := sdk.NewGuard(ctx, p.log, em, sdk.GuardOptions{Seed: "example"})
//	g.Go("sampler", p.sample)
//	g.Go("watcher", p.watch)
//	g.Wait()
//	return nil
//
// What a worker's return means:
//   - nil: the worker is finished and is not started again.
//   - an error: it is logged and the worker is started again after a backoff.
//   - a panic: it is logged with the stack, counted, and the worker is started
//     again after a backoff.
//   - anything, once the context is done: the worker is finished.
//
// Counters on the Emitter: CounterPanics ("panics_total") and
// CounterPanics+"."+name per worker, CounterRestarts ("worker_restarts_total")
// for restarts for any reason. Panics are also what the host cannot see:
// the plugin keeps running, so these counters are how the fleet learns of
// them.
type Guard struct {
	ctx  context.Context
	log  hclog.Logger
	em   Emitter
	opts GuardOptions
	wg   sync.WaitGroup
}

// Guard counter names.
const (
	CounterPanics   = "panics_total"
	CounterRestarts = "worker_restarts_total"
)

// GuardOptions tune a Guard; zero fields take the defaults below.
type GuardOptions struct {
	// Seed seeds the restart jitter; the worker name is appended. Use the
	// plugin name (and the host name where the plugin knows it).
	Seed string
	// Initial and Max bound the restart backoff.
	Initial, Max time.Duration
	// StableAfter: a worker that ran at least this long before it failed
	// is restarted after Initial again instead of the next, longer delay.
	StableAfter time.Duration
	// Clock waits between restarts and measures run time; tests pass a
	// fake one. Nil means SystemClock.
	Clock Clock
}

// Guard defaults.
const (
	DefaultGuardInitial     = 500 * time.Millisecond
	DefaultGuardMax         = 30 * time.Second
	DefaultGuardStableAfter = time.Minute
)

// NewGuard returns a Guard whose workers run until ctx is done. log receives
// panics and errors (nil discards them); em receives the counters (nil
// counts nothing).
func NewGuard(ctx context.Context, log hclog.Logger, em Emitter, opts GuardOptions) *Guard {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if opts.Initial <= 0 {
		opts.Initial = DefaultGuardInitial
	}
	if opts.Max <= 0 {
		opts.Max = DefaultGuardMax
	}
	if opts.StableAfter <= 0 {
		opts.StableAfter = DefaultGuardStableAfter
	}
	if opts.Clock == nil {
		opts.Clock = SystemClock()
	}
	return &Guard{ctx: ctx, log: log, em: em, opts: opts}
}

// Go starts fn as the worker called name (used in logs and counters). It
// may be called from inside another worker. After the context is done, Go
// starts nothing.
func (g *Guard) Go(name string, fn func(ctx context.Context) error) {
	if g.ctx.Err() != nil {
		return
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		g.supervise(name, fn)
	}()
}

// Wait blocks until every worker started by Go has finished: each returned
// nil, or the context is done and each has returned.
func (g *Guard) Wait() { g.wg.Wait() }

func (g *Guard) supervise(name string, fn func(ctx context.Context) error) {
	b := NewBackoff(g.opts.Seed+"/"+name, g.opts.Initial, g.opts.Max)
	b.Clock = g.opts.Clock
	log := g.log.With("worker", name)
	for {
		start := g.opts.Clock.Now()
		err, panicked := g.runOnce(name, fn)
		if g.ctx.Err() != nil {
			return
		}
		if err == nil {
			return
		}
		if g.opts.Clock.Now().Sub(start) >= g.opts.StableAfter {
			b.Reset()
		}
		delay := b.Next()
		if pe, ok := err.(*PanicError); panicked && ok {
			log.Error("worker panicked, restarting", "panic", fmt.Sprint(pe.Value), "stack", string(pe.Stack), "restart_in", delay)
		} else {
			log.Error("worker failed, restarting", "error", err, "restart_in", delay)
		}
		g.count(CounterRestarts)
		if g.opts.Clock.Sleep(g.ctx, delay) != nil {
			return
		}
	}
}

// runOnce runs fn and turns a panic into an error carrying the stack.
func (g *Guard) runOnce(name string, fn func(ctx context.Context) error) (err error, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			g.count(CounterPanics)
			g.count(CounterPanics + "." + name)
			err, panicked = &PanicError{Worker: name, Value: r, Stack: debug.Stack()}, true
		}
	}()
	return fn(g.ctx), false
}

func (g *Guard) count(name string) {
	if g.em != nil {
		g.em.Counter(name).Add(1)
	}
}

// PanicError is a recovered panic: the worker, the value it panicked with
// and the stack of the panicking goroutine.
type PanicError struct {
	Worker string
	Value  any
	Stack  []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("worker %s panicked: %v\n%s", e.Worker, e.Value, e.Stack)
}
