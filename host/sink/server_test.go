package sink

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/sdk"
	"go.uber.org/goleak"
)

func TestServerConfigValidate(t *testing.T) {
	if err := (ServerConfig{}).Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, tc := range []struct {
		cfg  ServerConfig
		want string
	}{
		{ServerConfig{QueueMB: 2000}, "sinks.server.queue_mb must be between 1 and 1024 (got 2000)"},
		{ServerConfig{BatchKB: 8}, "sinks.server.batch_kb must be between 16 and 4096 (got 8)"},
		{ServerConfig{QueueMB: 1, BatchKB: 2048}, "sinks.server.batch_kb must not exceed queue_mb*1024 (got batch_kb 2048, queue_mb 1)"},
		{ServerConfig{FlushInterval: time.Hour}, "sinks.server.flush_interval must be between 10ms and 1m0s (got 1h0m0s)"},
	} {
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := NewServer(ServerConfig{}, "h", http.DefaultClient, "ftp://x", nil); err == nil || !strings.Contains(err.Error(), `"ftp://x"`) {
		t.Fatalf("bad URL: %v", err)
	}
}

// serverDown returns a sink whose server never answers (a closed port), so
// nothing it takes is delivered.
func serverDown(t testing.TB, cfg ServerConfig) *Server {
	s, err := NewServer(cfg, "bench-host-1", &http.Client{}, "http://127.0.0.1:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestServerWriteDoesNotWait: with the server unreachable Write takes
// batches until the queue is full, then refuses them whole; Close counts
// the queued events as lost at shutdown.
func TestServerWriteDoesNotWait(t *testing.T) {
	s := serverDown(t, ServerConfig{QueueMB: 1, FlushInterval: 10 * time.Millisecond})
	b := benchBatch()
	var n uint64
	for {
		err := s.Write(context.Background(), b)
		if errors.Is(err, ErrQueueFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n += uint64(b.Count)
	}
	if c := s.Counts(); c.Accepted != n || c.Pending+c.Delivered != n || len(c.Lost) != 0 {
		t.Fatalf("counts %+v, accepted %d", c, n)
	}
	_ = s.Close()
	_ = s.Close()
	if c := s.Counts(); c.Lost[LostShutdown] != n || c.Pending != 0 {
		t.Fatalf("after Close: %+v", c)
	}
}

// BenchmarkServerWrite is the pipeline writer's cost of the server sink:
// encoding a batch of 512 six-field events into the queue (the sender is
// pointed at a closed port and the queue emptied between batches, so the
// figure has no network in it).
func BenchmarkServerWrite(b *testing.B) {
	s := serverDown(b, ServerConfig{QueueMB: 64, FlushInterval: time.Minute})
	defer s.Close()
	bt := benchBatch()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.Write(context.Background(), bt); err != nil {
			b.Fatal(err)
		}
		if i%64 == 63 {
			s.mu.Lock()
			s.queue, s.queued = nil, 0
			s.mu.Unlock()
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*bt.Count), "ns/event")
}

// TestServerCloseWithHungServer: a server that never answers does not hold
// Close beyond its final flush; the events are lost at shutdown.
func TestServerCloseWithHungServer(t *testing.T) {
	release := make(chan struct{})
	got := make(chan struct{}, 1)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer hs.Close()
	defer close(release)
	s, err := NewServer(ServerConfig{FlushInterval: 10 * time.Millisecond}, "h", hs.Client(), hs.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := benchBatch()
	if err := s.Write(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	<-got // the request is in flight
	closed := make(chan struct{})
	go func() { _ = s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(time.Minute):
		t.Fatal("Close waited on the hung server")
	}
	if c := s.Counts(); c.Lost[LostShutdown] != uint64(b.Count) || c.Pending != 0 || c.Accepted != uint64(b.Count) {
		t.Fatalf("counts %+v", c)
	}
}

// earlyAnswer is a transport that answers 200 at once and reads the body
// afterwards, as the RoundTripper contract allows: the first body only
// once the second request has started (or after two seconds).
type earlyAnswer struct {
	mu      sync.Mutex
	n       int
	second  chan struct{}
	readers sync.WaitGroup
	bodies  [][]byte
}

func (e *earlyAnswer) RoundTrip(req *http.Request) (*http.Response, error) {
	e.mu.Lock()
	e.n++
	n := e.n
	e.bodies = append(e.bodies, nil)
	e.mu.Unlock()
	if n == 2 {
		close(e.second)
	}
	e.readers.Add(1)
	go func() {
		defer e.readers.Done()
		if n == 1 {
			select {
			case <-e.second:
			case <-time.After(2 * time.Second):
			}
		}
		b, _ := io.ReadAll(req.Body)
		_ = req.Body.Close()
		e.mu.Lock()
		e.bodies[n-1] = b
		e.mu.Unlock()
	}()
	return &http.Response{StatusCode: http.StatusOK, Status: "200 OK", Body: io.NopCloser(strings.NewReader("")), Request: req}, nil
}

// TestServerBodyReadAfterAnswer: a body the transport still reads after
// its answer is not overwritten by the next one.
func TestServerBodyReadAfterAnswer(t *testing.T) {
	rt := &earlyAnswer{second: make(chan struct{})}
	s, err := NewServer(ServerConfig{FlushInterval: 10 * time.Millisecond}, "h", &http.Client{Transport: rt}, "http://vigil.invalid", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	batch := func(plugin string) *Batch {
		return batchOf(plugin, 64, func(i int) *sdk.Event {
			return &sdk.Event{Type: "exec", Time: time.Unix(int64(i), 0), Fields: []sdk.Field{sdk.Int("pid", int64(i))}}
		})
	}
	sent := func(n int) bool {
		rt.mu.Lock()
		defer rt.mu.Unlock()
		return rt.n >= n
	}
	for i, plugin := range []string{"first", "second"} {
		if err := s.Write(context.Background(), batch(plugin)); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(30 * time.Second); !sent(i + 1); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("request %d never sent", i+1)
			}
		}
	}
	rt.readers.Wait()
	for i, plugin := range []string{"first", "second"} {
		zr, err := gzip.NewReader(bytes.NewReader(rt.bodies[i]))
		if err != nil {
			t.Fatalf("body %d: %v", i+1, err)
		}
		b, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("body %d: %v", i+1, err)
		}
		if n := bytes.Count(b, []byte(`"plugin":"`+plugin+`"`)); n != 64 {
			t.Errorf("body %d holds %d events of plugin %q, want 64:\n%.300s", i+1, n, plugin, b)
		}
	}
}

// TestServerCloseLeavesNoConnection: Close ends the sink's keep-alive
// connection too, not only its sender.
func TestServerCloseLeavesNoConnection(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	defer hs.Close()
	before := goleak.IgnoreCurrent()
	s, err := NewServer(ServerConfig{FlushInterval: 10 * time.Millisecond}, "h", &http.Client{Transport: &http.Transport{}}, hs.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := benchBatch()
	if err := s.Write(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); s.Counts().Delivered != uint64(b.Count); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never delivered: %+v", s.Counts())
		}
	}
	_ = s.Close()
	goleak.VerifyNone(t, before)
}
