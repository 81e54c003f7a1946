package httpapi_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/vigil-hids/vigil/host/sink"
	"github.com/vigil-hids/vigil/sdk"
)

// BenchmarkEventsRoute posts gzip NDJSON bodies of 2048 events (the server
// sink's line format, ~250 bytes an event) to a real vigil-server over
// loopback TLS, from 4 concurrent clients; the server checks every line and
// appends it to its rotated events file.
func BenchmarkEventsRoute(b *testing.B) {
	f := newFleet(b)
	const n = 2048
	bt := batch(n, 0)
	enc := sink.NewEncoder("h1")
	enc.SetSource(bt.Plugin, bt.Version)
	var lines []byte
	rest := bt.Records
	for range n {
		rec, r, err := sdk.NextRecord(rest)
		if err != nil {
			b.Fatal(err)
		}
		if lines, err = enc.AppendLine(lines, rec); err != nil {
			b.Fatal(err)
		}
		rest = r
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(lines)
	_ = zw.Close()
	body := gz.Bytes()
	hc := f.client("h1")
	url := f.url() + "/v1/events"
	var failed atomic.Int64
	b.SetBytes(int64(len(lines)))
	b.SetParallelism(2) // 2 × GOMAXPROCS (2 cores) clients
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequestWithContext(context.Background(), "POST", url, bytes.NewReader(body))
			req.Header.Set("Content-Encoding", "gzip")
			resp, err := hc.Do(req)
			if err != nil {
				failed.Add(1)
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != 200 {
				failed.Add(1)
			}
		}
	})
	b.StopTimer()
	if failed.Load() > 0 {
		b.Fatalf("%d posts failed", failed.Load())
	}
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(len(body)), "gzip-bytes/op")
}
