package pipeline

import (
	"context"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vigil-hids/vigil/host/sink"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

const benchBatch = 512

// benchWire returns the wire bytes of an EventBatch of 512 exec-like events
// with six fields each, as a plugin's Run stream carries them.
func benchWire(b *testing.B) []byte {
	var recs []byte
	ts := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC).UnixNano()
	for i := range benchBatch {
		ev := sdk.Event{Type: "exec", Severity: sdk.SevInfo, Fields: []sdk.Field{
			sdk.Int("pid", int64(100000+i)),
			sdk.Int("ppid", 4242),
			sdk.Int("uid", 1000),
			sdk.String("exe", "/usr/bin/ls"),
			sdk.String("cmdline", "ls -la --color=auto /var/log/nginx"),
			sdk.String("cwd", "/home/deploy/releases/20261125"),
		}}
		recs = sdk.AppendEventRecord(recs, &ev, ts+int64(i))
	}
	wire, err := proto.Marshal(&pluginpb.EventBatch{Seq: 1, Count: benchBatch, Events: recs, EmittedTotal: benchBatch,
		Counters: map[string]uint64{"kernel_events_lost": 0}})
	if err != nil {
		b.Fatal(err)
	}
	return wire
}

func (in *Input) queuedNow() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.alerts.events + in.telem.events
}

// BenchmarkPipelineToFile measures one plugin's events from the wire bytes
// of an EventBatch (proto.Unmarshal, as the gRPC receive does) through
// Submit, the queue, the writer and the NDJSON encoder into the rotated
// file. One op is one batch of 512 events; allocs/event counts every heap
// allocation in the process during the run, the writer goroutine's
// included.
func BenchmarkPipelineToFile(b *testing.B) {
	wire := benchWire(b)
	fs, err := sink.NewFile(sink.FileConfig{Path: filepath.Join(b.TempDir(), "events.ndjson"), MaxSizeMB: 256}, "bench-host-1")
	if err != nil {
		b.Fatal(err)
	}
	cfg := Config{Plugins: map[string]Limits{"procmon": {Rate: MaxRate, Burst: MaxBurst, QueueSize: 1 << 20}}}
	p, err := New(cfg, []sink.Sink{fs}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	in := p.Register("procmon", "0.1.0")
	var ms0, ms1 runtime.MemStats
	var ru0, ru1 syscall.Rusage
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		bt := new(pluginpb.EventBatch)
		if err := proto.Unmarshal(wire, bt); err != nil {
			b.Fatal(err)
		}
		bt.EmittedTotal = uint64(i+1) * benchBatch
		// The benchmark measures throughput, not drops: hold the producer
		// back while the queue holds more than 64 batches.
		for in.queuedNow() > 64*benchBatch {
			time.Sleep(100 * time.Microsecond)
		}
		in.Submit(bt)
	}
	if err := p.Close(); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	runtime.ReadMemStats(&ms1)
	st := p.Stats()[0]
	events := float64(b.N) * benchBatch
	if st.Delivered != uint64(events) {
		b.Fatalf("delivered %d of %d events (dropped %v)", st.Delivered, uint64(events), st.Dropped)
	}
	b.ReportMetric(float64(elapsed.Nanoseconds())/events, "ns/event")
	// CPU time of the whole process (producer, writer, GC) per event: on
	// a shared, loaded machine this is steadier than the wall clock.
	cpu := time.Duration(syscall.TimevalToNsec(ru1.Utime) - syscall.TimevalToNsec(ru0.Utime) +
		syscall.TimevalToNsec(ru1.Stime) - syscall.TimevalToNsec(ru0.Stime))
	b.ReportMetric(float64(cpu.Nanoseconds())/events, "cpu-ns/event")
	b.ReportMetric(events/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/events, "allocs/event")
	b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/events, "B/event")
}

// BenchmarkSubmit measures the cost on the supervisor's stream reader:
// Submit of a decoded batch into the queue (the writer is not running and
// the queue is emptied outside the timer).
func BenchmarkSubmit(b *testing.B) {
	wire := benchWire(b)
	bt := new(pluginpb.EventBatch)
	if err := proto.Unmarshal(wire, bt); err != nil {
		b.Fatal(err)
	}
	cfg := Config{Plugins: map[string]Limits{"procmon": {Rate: MaxRate, Burst: MaxBurst, QueueSize: MaxQueueSize}}}
	p, err := New(cfg, []sink.Sink{sink.NewWriter("discard", discard{}, "h")}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	in := p.Register("procmon", "0.1.0")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bt.EmittedTotal = uint64(i+1) * benchBatch
		in.Submit(bt)
		if in.queuedNow() > MaxQueueSize-benchBatch {
			b.StopTimer()
			in.dropQueued()
			b.StartTimer()
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/(float64(b.N)*benchBatch), "ns/event")
	in.dropQueued() // so Close does not write them all
	if err := p.Close(); err != nil {
		b.Fatal(err)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
