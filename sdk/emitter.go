package sdk

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

// Emitter is how a plugin hands events to the host. Emit is safe for
// concurrent use and never blocks: when the plugin's send buffer is full the
// event is dropped, counted, and reported to the host with the reason.
type Emitter interface {
	// Emit encodes ev into the current batch. It returns ErrDropped if the
	// event was dropped (already counted).
	Emit(ev *Event) error
	// Counter returns the plugin-specific cumulative counter with that name
	// (created on first use); its value is reported to the host with every
	// batch, e.g. procmon's "kernel_events_lost".
	Counter(name string) *Counter
}

// ErrDropped is returned by Emit when the send buffer was full; the drop is
// counted under the reason DropBufferFull.
var ErrDropped = errors.New("sdk: event dropped, send buffer full")

// DropBufferFull is the drop reason for events the plugin could not queue
// because the host was not reading fast enough.
const DropBufferFull = "plugin_buffer_full"

// Counter is a cumulative plugin counter.
type Counter struct{ v atomic.Uint64 }

// Add adds n to the counter.
func (c *Counter) Add(n uint64) { c.v.Add(n) }

// Set sets the counter, for values the plugin reads from elsewhere.
func (c *Counter) Set(n uint64) { c.v.Store(n) }

// Load returns the counter's value.
func (c *Counter) Load() uint64 { return c.v.Load() }

// BatchOptions tune event batching.
type BatchOptions struct {
	// MaxEvents ends a batch at this many events.
	MaxEvents int
	// MaxBytes ends a batch at this many encoded bytes.
	MaxBytes int
	// FlushInterval sends a partial batch after this long.
	FlushInterval time.Duration
	// Pending is how many full batches may wait for the stream before
	// telemetry is dropped (alerts have a lane of their own).
	Pending int
}

// DefaultBatchOptions are used by Serve. MaxBytes keeps an encoded batch
// (events, a last event past the mark, and the counters) within gRPC's
// 32 KiB buffer class: larger messages are encoded into pooled 1 MiB
// buffers that gRPC clears in full on every use, which under a steady
// flow of events kept a megabyte resident and cleared one per batch.
var DefaultBatchOptions = BatchOptions{MaxEvents: 512, MaxBytes: 28 << 10, FlushInterval: 200 * time.Millisecond, Pending: 64}

type lane struct {
	buf   []byte
	count uint32
	last  int // bytes in the lane's previous batch, to size the next buffer
	out   chan *pluginpb.EventBatch
}

// batcher implements Emitter: it packs events into batches per lane
// (telemetry, alerts) and queues full batches for the stream.
type batcher struct {
	opts  BatchOptions
	clock *CoarseClock

	mu      sync.Mutex
	tele    lane
	alert   lane
	seq     uint64
	emitted atomic.Uint64
	dropped atomic.Uint64

	cmu      sync.Mutex
	counters map[string]*Counter
}

func newBatcher(opts BatchOptions, clock *CoarseClock) *batcher {
	b := &batcher{opts: opts, clock: clock, counters: map[string]*Counter{}}
	b.tele.out = make(chan *pluginpb.EventBatch, opts.Pending)
	b.alert.out = make(chan *pluginpb.EventBatch, opts.Pending)
	return b
}

func (b *batcher) Emit(ev *Event) error {
	ts := ev.Time.UnixNano()
	if ev.Time.IsZero() {
		ts = b.clock.UnixNano()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.emitted.Add(1)
	l := &b.tele
	if ev.Alert {
		l = &b.alert
	}
	if l.buf == nil {
		// Size the buffer like the previous batch: a quiet plugin does not
		// allocate a full batch's worth every flush, a busy one grows once.
		l.buf = make([]byte, 0, min(max(l.last+l.last/8, 1024), b.opts.MaxBytes+b.opts.MaxBytes/8))
	}
	l.buf = AppendEventRecord(l.buf, ev, ts)
	l.count++
	if int(l.count) >= b.opts.MaxEvents || len(l.buf) >= b.opts.MaxBytes {
		return b.flushLocked(l)
	}
	return nil
}

// flushLocked queues the lane's batch, or drops and counts it.
func (b *batcher) flushLocked(l *lane) error {
	if l.count == 0 {
		return nil
	}
	b.seq++
	batch := &pluginpb.EventBatch{Seq: b.seq, Count: l.count, Alerts: l == &b.alert, Events: l.buf}
	n := l.count
	l.last = len(l.buf)
	l.buf, l.count = nil, 0
	select {
	case l.out <- batch:
		return nil
	default:
		b.dropped.Add(uint64(n))
		return ErrDropped
	}
}

// flush queues partial batches of both lanes.
func (b *batcher) flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	_ = b.flushLocked(&b.alert)
	_ = b.flushLocked(&b.tele)
}

func (b *batcher) Counter(name string) *Counter {
	b.cmu.Lock()
	defer b.cmu.Unlock()
	c, ok := b.counters[name]
	if !ok {
		c = &Counter{}
		b.counters[name] = c
	}
	return c
}

// stamp fills the batch's cumulative counters just before it is sent, so
// the totals the host sees are never older than the events it has.
func (b *batcher) stamp(batch *pluginpb.EventBatch) {
	// Read dropped before emitted: every dropped event was counted as
	// emitted first, so the host never sees more dropped than emitted.
	d := b.dropped.Load()
	batch.EmittedTotal = b.emitted.Load()
	if d > 0 {
		batch.DroppedTotal = map[string]uint64{DropBufferFull: d}
	}
	b.cmu.Lock()
	if len(b.counters) > 0 {
		batch.Counters = make(map[string]uint64, len(b.counters))
		for k, c := range b.counters {
			batch.Counters[k] = c.Load()
		}
	}
	b.cmu.Unlock()
}

// send drains the lanes into send (alerts first) until stop is closed, then
// flushes what is left. An empty batch carrying only counters is sent each
// idle interval so the host's view of the counters stays fresh.
func (b *batcher) send(stop <-chan struct{}, send func(*pluginpb.EventBatch) error) error {
	tick := time.NewTicker(b.opts.FlushInterval)
	defer tick.Stop()
	idle := 0
	for {
		var batch *pluginpb.EventBatch
		select {
		case batch = <-b.alert.out:
		default:
			select {
			case batch = <-b.alert.out:
			case batch = <-b.tele.out:
			case <-tick.C:
				b.flush()
				if idle++; idle >= 5 && len(b.alert.out) == 0 && len(b.tele.out) == 0 {
					idle = 0
					batch = &pluginpb.EventBatch{}
				}
			case <-stop:
				b.flush()
				return b.drain(send)
			}
		}
		if batch == nil {
			continue
		}
		if batch.Count > 0 {
			idle = 0
		}
		b.stamp(batch)
		if err := send(batch); err != nil {
			return err
		}
	}
}

func (b *batcher) drain(send func(*pluginpb.EventBatch) error) error {
	for {
		var batch *pluginpb.EventBatch
		select {
		case batch = <-b.alert.out:
		case batch = <-b.tele.out:
		default:
			batch = &pluginpb.EventBatch{}
			b.stamp(batch)
			return send(batch)
		}
		b.stamp(batch)
		if err := send(batch); err != nil {
			return err
		}
	}
}
