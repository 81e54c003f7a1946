package sdk

import (
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

// These tests drive the batcher directly (it is unexported); the flood
// tests in plugins/testplugin cover the same promises end to end over gRPC.

func newTestBatcher(t *testing.T, opts BatchOptions) *batcher {
	t.Helper()
	def := DefaultBatchOptions
	if opts.MaxEvents == 0 {
		opts.MaxEvents = def.MaxEvents
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = def.MaxBytes
	}
	if opts.FlushInterval == 0 {
		opts.FlushInterval = time.Hour // flush only when a test asks
	}
	if opts.Pending == 0 {
		opts.Pending = def.Pending
	}
	clock := NewCoarseClock(MinCoarseResolution)
	t.Cleanup(clock.Stop)
	return newBatcher(opts, clock)
}

func queued(l *lane) []*pluginpb.EventBatch {
	var out []*pluginpb.EventBatch
	for {
		select {
		case b := <-l.out:
			out = append(out, b)
		default:
			return out
		}
	}
}

func counts(bs []*pluginpb.EventBatch) []uint32 {
	var c []uint32
	for _, b := range bs {
		c = append(c, b.Count)
	}
	return c
}

func equalCounts(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBatcherFlushesBySize(t *testing.T) {
	big := String("blob", string(make([]byte, 1000)))
	tests := []struct {
		name   string
		opts   BatchOptions
		events int
		field  Field
		want   []uint32 // batch counts queued before the final flush
	}{
		{name: "by event count", opts: BatchOptions{MaxEvents: 3}, events: 7, field: Int("n", 1), want: []uint32{3, 3}},
		{name: "by bytes", opts: BatchOptions{MaxBytes: 2500}, events: 7, field: big, want: []uint32{3, 3}},
		{name: "below both", opts: BatchOptions{MaxEvents: 100}, events: 7, field: Int("n", 1), want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newTestBatcher(t, tt.opts)
			ev := Event{Type: "x", Fields: []Field{tt.field}}
			for i := 0; i < tt.events; i++ {
				if err := b.Emit(&ev); err != nil {
					t.Fatal(err)
				}
			}
			got := queued(&b.tele)
			if !equalCounts(counts(got), tt.want) {
				t.Fatalf("batches %v, want %v", counts(got), tt.want)
			}
			b.flush()
			rest := queued(&b.tele)
			total := 0
			for _, x := range append(got, rest...) {
				total += int(x.Count)
				if x.Alerts {
					t.Error("telemetry batch marked alerts")
				}
			}
			if total != tt.events {
				t.Errorf("%d events in batches, want %d", total, tt.events)
			}
		})
	}
}

func TestBatcherSendsAlertsFirst(t *testing.T) {
	b := newTestBatcher(t, BatchOptions{MaxEvents: 2})
	tele := Event{Type: "t"}
	alert := Event{Type: "a", Alert: true, Severity: SevWarning}
	for i := 0; i < 6; i++ {
		_ = b.Emit(&tele) // three telemetry batches queued
	}
	_ = b.Emit(&alert)
	_ = b.Emit(&alert) // then one alert batch
	var sent []*pluginpb.EventBatch
	stop := make(chan struct{})
	close(stop)
	err := b.send(stop, func(batch *pluginpb.EventBatch) error {
		sent = append(sent, batch)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sent) < 4 || !sent[0].Alerts || sent[0].Count != 2 {
		t.Fatalf("first batch sent = %+v, want the alert batch", sent[0])
	}
	for _, s := range sent[1:4] {
		if s.Alerts || s.Count != 2 {
			t.Errorf("then %+v, want telemetry batches of 2", s)
		}
	}
	last := sent[len(sent)-1]
	if last.Count != 0 || last.EmittedTotal != 8 {
		t.Errorf("final batch %+v, want an empty batch with emitted_total 8", last)
	}
}

func TestBatcherDropsAndCountsWhenPendingIsFull(t *testing.T) {
	b := newTestBatcher(t, BatchOptions{MaxEvents: 1, Pending: 2})
	ev := Event{Type: "t"}
	var dropped int
	for i := 0; i < 10; i++ {
		if err := b.Emit(&ev); errors.Is(err, ErrDropped) {
			dropped++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if dropped != 8 {
		t.Errorf("Emit returned ErrDropped %d times, want 8 (Pending 2 of 10)", dropped)
	}
	// The telemetry lane is full; alerts have their own lane.
	alert := Event{Type: "a", Alert: true}
	if err := b.Emit(&alert); err != nil {
		t.Errorf("alert dropped while only telemetry was full: %v", err)
	}

	var sent, last uint64
	var stamp *pluginpb.EventBatch
	stop := make(chan struct{})
	close(stop)
	if err := b.send(stop, func(batch *pluginpb.EventBatch) error {
		sent += uint64(batch.Count)
		stamp = batch
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	last = stamp.EmittedTotal
	if last != 11 || stamp.DroppedTotal[DropBufferFull] != 8 {
		t.Errorf("totals emitted %d dropped %v, want 11 and 8", last, stamp.DroppedTotal)
	}
	if sent+stamp.DroppedTotal[DropBufferFull] != last {
		t.Errorf("sent %d + dropped %d != emitted %d", sent, stamp.DroppedTotal[DropBufferFull], last)
	}
}

func TestBatcherFlushesByTimeAndStampsCounters(t *testing.T) {
	b := newTestBatcher(t, BatchOptions{FlushInterval: 5 * time.Millisecond})
	b.Counter("kernel_events_lost").Add(3)
	got := make(chan *pluginpb.EventBatch, 100)
	stop := make(chan struct{})
	done := make(chan error)
	go func() {
		done <- b.send(stop, func(batch *pluginpb.EventBatch) error {
			select {
			case got <- batch:
			default:
			}
			return nil
		})
	}()
	defer func() {
		close(stop)
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	before := time.Now()
	if err := b.Emit(&Event{Type: "one"}); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(10 * time.Second)
	var batch *pluginpb.EventBatch
	for batch == nil || batch.Count == 0 {
		select {
		case batch = <-got:
		case <-timeout:
			t.Fatal("a partial batch was not flushed by the timer")
		}
	}
	if batch.Count != 1 || batch.Counters["kernel_events_lost"] != 3 || batch.EmittedTotal != 1 {
		t.Errorf("batch = %+v", batch)
	}
	var v EventView
	rec, _, _ := NextRecord(batch.Events)
	if err := ParseEvent(rec, &v); err != nil {
		t.Fatal(err)
	}
	// A zero Time is stamped from the coarse clock, which lags by at most
	// its resolution.
	if ts := time.Unix(0, v.TimeUnixNano); ts.Before(before.Add(-2*MinCoarseResolution)) || ts.After(time.Now()) {
		t.Errorf("event time %v, emitted at %v", ts, before)
	}

	// With nothing to send, an empty batch still carries the counters.
	b.Counter("kernel_events_lost").Add(1)
	for {
		select {
		case batch = <-got:
			if batch.Count == 0 && batch.Counters["kernel_events_lost"] == 4 {
				return
			}
		case <-timeout:
			t.Fatal("no idle batch carried the new counter value")
		}
	}
}

func TestBatcherKeepsExplicitTime(t *testing.T) {
	b := newTestBatcher(t, BatchOptions{})
	at := time.Date(2020, 1, 2, 3, 4, 5, 6, time.UTC)
	_ = b.Emit(&Event{Type: "x", Time: at})
	b.flush()
	batch := <-b.tele.out
	rec, _, _ := NextRecord(batch.Events)
	var v EventView
	if err := ParseEvent(rec, &v); err != nil || v.TimeUnixNano != at.UnixNano() {
		t.Errorf("time %d (%v), want %d", v.TimeUnixNano, err, at.UnixNano())
	}
}

func TestBatcherConcurrentEmitAccountsForEverything(t *testing.T) {
	b := newTestBatcher(t, BatchOptions{MaxEvents: 64, Pending: 4, FlushInterval: time.Millisecond})
	var sent uint64
	var final *pluginpb.EventBatch
	stop := make(chan struct{})
	done := make(chan error)
	go func() {
		done <- b.send(stop, func(batch *pluginpb.EventBatch) error {
			sent += uint64(batch.Count)
			final = batch
			return nil
		})
	}()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev := Event{Type: "c", Alert: w == 0, Fields: []Field{Int("w", int64(w))}}
			for i := 0; i < 20000; i++ {
				_ = b.Emit(&ev)
			}
		}()
	}
	wg.Wait()
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	dropped := final.DroppedTotal[DropBufferFull]
	if final.EmittedTotal != 8*20000 || sent+dropped != final.EmittedTotal {
		t.Errorf("emitted %d, sent %d, dropped %d", final.EmittedTotal, sent, dropped)
	}
}

// TestDefaultBatchFitsSmallBuffers checks that a batch flushed by size at
// the default options, stamped with a plugin's counters, encodes within
// 32 KiB, the largest of gRPC's pooled buffer classes below 1 MiB.
func TestDefaultBatchFitsSmallBuffers(t *testing.T) {
	b := newTestBatcher(t, BatchOptions{})
	for i := range 12 {
		b.Counter("some_plugin_counter_" + string(rune('a'+i))).Add(uint64(1) << 40)
	}
	ev := Event{Type: "exec", Fields: []Field{Int("pid", 123456), String("exe", "/usr/lib/jvm/java-21/bin/java"),
		String("cmdline", string(make([]byte, 300))), String("cwd", "/srv/app"), Int("uid", 1000)}}
	for len(b.tele.out) == 0 {
		if err := b.Emit(&ev); err != nil {
			t.Fatal(err)
		}
	}
	batch := <-b.tele.out
	b.dropped.Add(1) // a batch that carries a drop count too
	b.stamp(batch)
	n, err := proto.Marshal(batch)
	if err != nil {
		t.Fatal(err)
	}
	if len(n) > 32<<10 {
		t.Errorf("a full batch of %d events encodes to %d bytes, more than 32 KiB", batch.Count, len(n))
	}
}
