// Package pipeline carries events from the host's plugins to its sinks. It
// owns, per plugin, the bounded queue, the token-bucket rate limits and the
// exact drop counters the design promises ("nothing is lost silently"):
// for every plugin, at any moment,
//
//	emitted = delivered + dropped (all reasons) + queued + in_plugin
//
// where emitted is the plugin's own cumulative count, summed over its
// restarts, and in_plugin is what the plugin has counted but not yet sent
// (its partial batch; zero after it shuts down cleanly).
//
// The supervisor calls Register once per plugin and Submit for every batch
// it receives; Submit never blocks. One writer goroutine drains all
// plugins' queues, alerts first and round-robin between plugins, into the
// sinks.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigil-hids/vigil/host/sink"
	"github.com/vigil-hids/vigil/sdk"
)

// Clock is the time source of the rate limits; sdk.Clock satisfies it.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("pipeline: closed")

// Pipeline routes plugin batches to the sinks.
type Pipeline struct {
	cfg   Config
	sinks []sink.Sink
	log   *slog.Logger
	clock Clock

	mu     sync.Mutex
	byName map[string]*Input
	inputs atomic.Pointer[[]*Input]

	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	ready   chan struct{}
	errc    chan error
	closing atomic.Bool

	life      sync.Mutex // orders Start against Close
	started   bool
	closeOnce sync.Once
	closeErr  error

	// Used by the writer goroutine only.
	rr       int
	batch    sink.Batch
	view     sdk.EventView
	lastLog  []time.Time
	panics   atomic.Uint64
	writeCtx context.Context
	cancel   context.CancelFunc
}

// New validates cfg and returns a pipeline writing to sinks, which it owns
// and closes on Close. The caller names the component in log (the
// pipeline adds no "component" field); a nil log discards, a nil clock
// means the system clock.
func New(cfg Config, sinks []sink.Sink, log *slog.Logger, clock Clock) (*Pipeline, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("pipeline config: %w", err)
	}
	if len(sinks) == 0 {
		return nil, errors.New("pipeline: no sinks")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if clock == nil {
		clock = systemClock{}
	}
	p := &Pipeline{
		cfg:     cfg.WithDefaults(),
		sinks:   sinks,
		log:     log,
		clock:   clock,
		byName:  map[string]*Input{},
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		ready:   make(chan struct{}),
		errc:    make(chan error, 1),
		lastLog: make([]time.Time, len(sinks)),
	}
	p.inputs.Store(&[]*Input{})
	p.writeCtx, p.cancel = context.WithCancel(context.Background())
	return p, nil
}

// Start starts the writer goroutine. Cancelling ctx stops the pipeline
// taking batches and drains the queues as Close does; Close must still be
// called to release the sinks. Start after Close returns ErrClosed.
func (p *Pipeline) Start(ctx context.Context) error {
	p.life.Lock()
	defer p.life.Unlock()
	if p.closing.Load() {
		return ErrClosed
	}
	if !p.started {
		p.started = true
		go p.run(ctx)
		close(p.ready)
	}
	return nil
}

// Ready is closed once the writer is running.
func (p *Pipeline) Ready() <-chan struct{} { return p.ready }

// Err delivers the error that stopped the writer, if it stops by itself.
// It never does today: a failing or panicking sink is counted and logged,
// and the writer carries on.
func (p *Pipeline) Err() <-chan error { return p.errc }

// Register returns the input of the named plugin, creating it on first
// use. Registering again (after an upgrade) keeps the counters and sets the
// version written on the plugin's next events.
func (p *Pipeline) Register(plugin, version string) *Input {
	p.mu.Lock()
	defer p.mu.Unlock()
	if in, ok := p.byName[plugin]; ok {
		in.SetVersion(version)
		return in
	}
	in := newInput(p, plugin, version, p.cfg.For(plugin))
	p.byName[plugin] = in
	old := *p.inputs.Load()
	next := make([]*Input, len(old), len(old)+1)
	copy(next, old)
	next = append(next, in)
	p.inputs.Store(&next)
	return in
}

func (p *Pipeline) notify() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Close stops accepting batches, writes what is queued to the sinks for at
// most the configured close timeout, counts what is left as dropped
// (reason "shutdown"), then flushes and closes the sinks. It is idempotent
// and returns the sinks' close errors.
func (p *Pipeline) Close() error {
	p.closeOnce.Do(func() {
		p.life.Lock()
		p.closing.Store(true)
		started := p.started
		p.life.Unlock()
		close(p.stop)
		timer := time.AfterFunc(p.cfg.CloseTimeout, p.cancel)
		if started {
			<-p.done
		} else {
			p.drain()
		}
		timer.Stop()
		p.cancel()
		for _, in := range *p.inputs.Load() {
			in.dropQueued()
		}
		var errs []error
		for _, s := range p.sinks {
			if err := s.Close(); err != nil {
				errs = append(errs, fmt.Errorf("closing sink %s: %w", s.Name(), err))
			}
		}
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

// run is the writer goroutine.
func (p *Pipeline) run(ctx context.Context) {
	defer close(p.done)
	idle := true
	for {
		if p.writeCtx.Err() != nil {
			return // Close's deadline passed while the queues were busy
		}
		if p.round() {
			idle = false
			continue
		}
		if !idle {
			p.flush()
			idle = true
		}
		select {
		case <-p.wake:
		case <-p.stop:
			p.drain()
			return
		case <-ctx.Done():
			// Stop taking batches and drain as Close would; Close still
			// has to be called to release the sinks.
			p.closing.Store(true)
			t := time.AfterFunc(p.cfg.CloseTimeout, p.cancel)
			p.drain()
			t.Stop()
			return
		}
	}
}

// drain writes until the queues are empty or the close deadline passes.
func (p *Pipeline) drain() {
	for p.writeCtx.Err() == nil && p.round() {
	}
	p.flush()
}

// round writes one batch of each plugin that has one: alerts if any
// plugin has alerts queued, else telemetry. It reports whether it wrote.
func (p *Pipeline) round() bool {
	ins := *p.inputs.Load()
	if len(ins) == 0 {
		return false
	}
	p.rr++
	for _, alerts := range [2]bool{true, false} {
		wrote := false
		for i := range ins {
			in := ins[(p.rr+i)%len(ins)]
			if e, ok := in.pop(alerts); ok {
				p.deliver(in, e)
				wrote = true
			}
		}
		if wrote {
			return true
		}
	}
	return false
}

// deliver checks an entry's records and writes them to every sink.
func (p *Pipeline) deliver(in *Input, e entry) {
	recs, ok := p.validate(e.recs, e.n)
	bad := e.n - ok
	if ok == 0 {
		in.done(e.n, 0, bad, 0)
		return
	}
	p.batch = sink.Batch{Plugin: in.name, Version: e.version, Count: ok, Records: recs}
	failed := false
	for i, s := range p.sinks {
		if err := p.write(s, &p.batch); err != nil {
			failed = true
			p.logSinkError(i, s, in.name, ok, err)
		}
	}
	p.batch = sink.Batch{}
	if failed {
		in.done(e.n, 0, bad, ok)
		return
	}
	in.done(e.n, ok, bad, 0)
}

// write calls s.Write, turning a panic into an error.
func (p *Pipeline) write(s sink.Sink, b *sink.Batch) (err error) {
	defer func() {
		if r := recover(); r != nil {
			p.panics.Add(1)
			err = fmt.Errorf("sink %s panicked: %v", s.Name(), r)
		}
	}()
	return s.Write(p.writeCtx, b)
}

// logSinkError logs a sink failure at most once a second per sink, so a
// full disk does not flood the host log.
func (p *Pipeline) logSinkError(i int, s sink.Sink, plugin string, n int, err error) {
	now := p.clock.Now()
	if !p.lastLog[i].IsZero() && now.Sub(p.lastLog[i]) < time.Second {
		return
	}
	p.lastLog[i] = now
	p.log.Error("sink write failed, events dropped", "sink", s.Name(), "plugin", plugin, "events", n, "reason", DropSinkError, "error", err)
}

func (p *Pipeline) flush() {
	for _, s := range p.sinks {
		if err := s.Flush(p.writeCtx); err != nil {
			p.log.Error("sink flush failed", "sink", s.Name(), "error", err)
		}
	}
}

// validate returns the prefix of recs made of records that decode, and
// how many of the n records it holds.
func (p *Pipeline) validate(recs []byte, n int) ([]byte, int) {
	rest := recs
	for i := 0; i < n; i++ {
		rec, r, err := sdk.NextRecord(rest)
		if err == nil {
			err = sdk.ParseEvent(rec, &p.view)
		}
		if err == nil {
			it := p.view.Fields()
			for it.Next() {
			}
			err = it.Err()
		}
		if err != nil {
			return recs[:len(recs)-len(rest)], i
		}
		rest = r
	}
	return recs[:len(recs)-len(rest)], n
}
