package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigil-hids/vigil/host/sink"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

func TestMain(m *testing.M) {
	// lumberjack (the file sink, in benchmarks) keeps one idle goroutine
	// per file for ever (v2.2.1).
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("gopkg.in/natefinch/lumberjack%2ev2.(*Logger).millRun"))
}

// fakeClock is a clock tests move by hand, so rate limits are tested
// without sleeping.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// got is one event as a sink received it.
type got struct {
	plugin string
	alert  bool
	i      int64
}

// memSink is a real Sink that decodes and keeps what it is given, and can
// be told to fail, panic or block; the file sink's own behaviour is tested
// in package sink.
type memSink struct {
	name string

	mu     sync.Mutex
	events []got
	writes []int // batch sizes, in order
	fail   error
	// failEvery fails every n-th write when set.
	failEvery int
	calls     int
	panic     bool
	block     bool // Write waits for ctx
}

func (s *memSink) Name() string { return s.name }

func (s *memSink) Write(ctx context.Context, b *sink.Batch) error {
	s.mu.Lock()
	fail, pan, block := s.fail, s.panic, s.block
	s.calls++
	if s.failEvery > 0 && s.calls%s.failEvery == 0 {
		fail = errors.New("memSink: failing every few writes")
	}
	s.mu.Unlock()
	if block {
		<-ctx.Done()
		return ctx.Err()
	}
	if pan {
		panic("sink exploded")
	}
	if fail != nil {
		return fail
	}
	var v sdk.EventView
	rest := b.Records
	var evs []got
	for range b.Count {
		rec, r, err := sdk.NextRecord(rest)
		if err != nil {
			return err
		}
		if err := sdk.ParseEvent(rec, &v); err != nil {
			return err
		}
		g := got{plugin: b.Plugin, alert: v.Alert}
		it := v.Fields()
		for it.Next() {
			if string(it.Key) == "i" {
				g.i = it.Int
			}
		}
		evs = append(evs, g)
		rest = r
	}
	if len(rest) != 0 {
		return errors.New("memSink: bytes after the last record")
	}
	s.mu.Lock()
	s.events = append(s.events, evs...)
	s.writes = append(s.writes, b.Count)
	s.mu.Unlock()
	return nil
}

func (s *memSink) Flush(context.Context) error { return nil }
func (s *memSink) Close() error                { return nil }

func (s *memSink) set(f func(s *memSink)) {
	s.mu.Lock()
	f(s)
	s.mu.Unlock()
}

func (s *memSink) got() []got {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]got(nil), s.events...)
}

// batch builds a batch of n events whose field i runs from start.
func batch(start, n int, alert bool, emitted uint64) *pluginpb.EventBatch {
	var recs []byte
	for k := range n {
		ev := sdk.Event{Type: "t", Alert: alert, Fields: []sdk.Field{sdk.Int("i", int64(start+k)), sdk.String("s", "v")}}
		recs = sdk.AppendEventRecord(recs, &ev, 1)
	}
	return &pluginpb.EventBatch{Count: uint32(n), Alerts: alert, Events: recs, EmittedTotal: emitted}
}

func newPipeline(t *testing.T, cfg Config, clock Clock, sinks ...sink.Sink) *Pipeline {
	t.Helper()
	p, err := New(cfg, sinks, nil, clock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func statsOf(t *testing.T, p *Pipeline, plugin string) PluginStats {
	t.Helper()
	for _, s := range p.Stats() {
		if s.Plugin == plugin {
			return s
		}
	}
	t.Fatalf("no stats for %q", plugin)
	return PluginStats{}
}

// balanced asserts the accounting identity.
func balanced(t *testing.T, s PluginStats) {
	t.Helper()
	if err := imbalance(s); err != nil {
		t.Fatal(err)
	}
}

func imbalance(s PluginStats) error {
	if sum := s.Delivered + s.DroppedTotal() + s.Queued + s.InPlugin; sum != s.Emitted {
		return fmt.Errorf("%s: emitted %d != delivered %d + dropped %v + queued %d + in_plugin %d", s.Plugin, s.Emitted, s.Delivered, s.Dropped, s.Queued, s.InPlugin)
	}
	return nil
}

func seq(from, to int) []int64 {
	var s []int64
	for i := from; i < to; i++ {
		s = append(s, int64(i))
	}
	return s
}

func indexes(gs []got, alert bool) []int64 {
	var s []int64
	for _, g := range gs {
		if g.alert == alert {
			s = append(s, g.i)
		}
	}
	return s
}
