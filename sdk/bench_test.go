package sdk

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

// benchEvent is a typical procmon exec event.
func benchEvent() *Event {
	return &Event{Type: "exec", Severity: SevInfo, Fields: []Field{
		Int("pid", 123456), Int("ppid", 1), Int("uid", 0),
		String("exe", "/usr/bin/python3"), String("cmdline", "python3 /opt/app/worker.py --queue=high"),
		Bool("container", false),
	}}
}

// drain runs a sender that discards batches, as a fast host would read
// them, and returns a stop function that waits for it.
func drain(b *batcher) func() {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.send(stop, func(*pluginpb.EventBatch) error { return nil })
	}()
	return func() { close(stop); <-done }
}

// BenchmarkEmit measures the plugin side of one event: encoding into the
// current batch and handing full batches to the sender. Target: 0
// allocations per event (a batch buffer is allocated once per ~500 events).
func BenchmarkEmit(b *testing.B) {
	clock := NewCoarseClock(MinCoarseResolution)
	defer clock.Stop()
	bt := newBatcher(DefaultBatchOptions, clock)
	stop := drain(bt)
	defer stop()
	ev := benchEvent()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = bt.Emit(ev)
	}
	b.StopTimer()
	b.ReportMetric(float64(bt.dropped.Load())/float64(b.N), "dropped/op")
}

// BenchmarkEmitParallel is BenchmarkEmit from GOMAXPROCS goroutines.
func BenchmarkEmitParallel(b *testing.B) {
	clock := NewCoarseClock(MinCoarseResolution)
	defer clock.Stop()
	bt := newBatcher(DefaultBatchOptions, clock)
	stop := drain(bt)
	defer stop()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ev := benchEvent()
		for pb.Next() {
			_ = bt.Emit(ev)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(bt.dropped.Load())/float64(b.N), "dropped/op")
}

// BenchmarkAppendEventRecord is the encoding alone.
func BenchmarkAppendEventRecord(b *testing.B) {
	ev := benchEvent()
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = AppendEventRecord(buf[:0], ev, 1764000000123456789)
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkProtoMarshalEvent is the same event through the generated code,
// for comparison with BenchmarkAppendEventRecord.
func BenchmarkProtoMarshalEvent(b *testing.B) {
	ev := benchEvent()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		pb := &pluginpb.Event{Type: ev.Type, TimeUnixNano: 1764000000123456789, Severity: uint32(ev.Severity)}
		for _, f := range ev.Fields {
			pf := &pluginpb.Field{Key: f.Key}
			switch f.Kind {
			case KindInt:
				pf.Value = &pluginpb.Field_Int{Int: f.Int}
			case KindBool:
				pf.Value = &pluginpb.Field_Bool{Bool: f.Int != 0}
			default:
				pf.Value = &pluginpb.Field_Str{Str: f.Str}
			}
			pb.Fields = append(pb.Fields, pf)
		}
		if _, err := proto.Marshal(pb); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseEvent measures the host side of one event: splitting the
// record off a batch, parsing it and walking its fields. Target: 0
// allocations.
func BenchmarkParseEvent(b *testing.B) {
	rec := AppendEventRecord(nil, benchEvent(), 1764000000123456789)
	var v EventView
	b.ReportAllocs()
	b.SetBytes(int64(len(rec)))
	for i := 0; i < b.N; i++ {
		r, _, err := NextRecord(rec)
		if err != nil {
			b.Fatal(err)
		}
		if err := ParseEvent(r, &v); err != nil {
			b.Fatal(err)
		}
		for it := v.Fields(); it.Next(); {
		}
	}
}

// BenchmarkProtoUnmarshalEvent is the same record through the generated
// code, for comparison with BenchmarkParseEvent.
func BenchmarkProtoUnmarshalEvent(b *testing.B) {
	rec := AppendEventRecord(nil, benchEvent(), 1764000000123456789)
	r, _, _ := NextRecord(rec)
	b.ReportAllocs()
	b.SetBytes(int64(len(rec)))
	for i := 0; i < b.N; i++ {
		var pb pluginpb.Event
		if err := proto.Unmarshal(r, &pb); err != nil {
			b.Fatal(err)
		}
	}
}
