package sink

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/sdk"
)

func benchBatch() *Batch {
	ts := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC).UnixNano()
	return batchOf("procmon", 512, func(i int) *sdk.Event {
		return &sdk.Event{Type: "exec", Time: time.Unix(0, ts+int64(i)), Severity: sdk.SevInfo, Fields: []sdk.Field{
			sdk.Int("pid", int64(100000+i)), sdk.Int("ppid", 4242), sdk.Int("uid", 1000),
			sdk.String("exe", "/usr/bin/ls"), sdk.String("cmdline", "ls -la --color=auto /var/log/nginx"),
			sdk.String("cwd", "/home/deploy/releases/20261125"),
		}}
	})
}

func benchWrite(b *testing.B, s *Writer) {
	bt := benchBatch()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.Write(context.Background(), bt); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*bt.Count), "ns/event")
	b.ReportMetric(float64(b.N*bt.Count)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkEncode is the NDJSON encoding alone: one op is a batch of 512
// six-field events written to io.Discard.
func BenchmarkEncode(b *testing.B) { benchWrite(b, NewWriter("discard", io.Discard, "bench-host-1")) }

// BenchmarkFile adds the writes to the rotated file.
func BenchmarkFile(b *testing.B) {
	s, err := NewFile(FileConfig{Path: filepath.Join(b.TempDir(), "events.ndjson"), MaxSizeMB: 256}, "bench-host-1")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchWrite(b, s)
}
