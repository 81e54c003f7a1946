package vulnreport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigil-hids/vigil/host/sink"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/server/auth"
	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/server/vulnstore"
	"github.com/vigil-hids/vigil/vuln/inventory"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func inv() inventory.Inventory {
	return inventory.Inventory{Ecosystem: "dpkg", OS: inventory.OS{ID: "debian", VersionID: "12"},
		Packages: []inventory.Package{{Name: "libssl3", Version: "3.0.11-1~deb12u2", Source: "openssl"}}}
}

// taskJSON is what vulnscan's inventory task returns.
func taskJSON(i inventory.Inventory, digest string) json.RawMessage {
	b, _ := json.Marshal(map[string]any{"digest": digest, "kernel": "6.1.0", "database": "/var/lib/dpkg/status", "inventory": i})
	return b
}

// server is the real ingest API (vulnstore behind httpapi) with a switch
// that makes it answer 503 while "down".
type server struct {
	*httptest.Server
	svc  *vulnstore.Service
	down atomic.Int32 // requests still to refuse
	hits atomic.Int32
	// refuseUploads holds statuses to answer inventory uploads with, as
	// the server does when busy (503) or when a body stalls (408).
	refuseUploads chan int
}

func newServer(t *testing.T) *server {
	t.Helper()
	svc, err := vulnstore.Open(vulnstore.Config{Dir: t.TempDir(), OSV: []string{"../../vuln/osv/sample"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	h := httpapi.New(httpapi.Options{Anonymous: &auth.Identity{Name: "anonymous", Role: auth.Host}, Vuln: &httpapi.VulnOptions{Service: svc}})
	s := &server{svc: svc, refuseUploads: make(chan int, 8)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if s.down.Add(-1) >= 0 {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		if r.URL.Path == "/v1/vuln/inventory" {
			select {
			case code := <-s.refuseUploads:
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(code)
				_ = json.NewEncoder(w).Encode(httpapi.Error{Error: fmt.Sprintf("refused %d by the test", code), Code: "busy"})
				return
			default:
			}
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func run(t *testing.T, r *Reporter, task TaskFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r.Run(ctx, task) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func newReporter(t *testing.T, s *server, host string, mod func(*Config)) *Reporter {
	t.Helper()
	cfg := Config{Host: host, URL: s.URL, Client: s.Client(), Plugin: "vulnscan", FirstCheck: time.Hour,
		BackoffInitial: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond, Log: slog.New(slog.DiscardHandler)}
	if mod != nil {
		mod(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestDigestFirstAndRetries: the server is down for the first requests;
// the reporter retries with backoff and uploads once it answers; a second
// host with the same inventory sends only its digest and never runs the
// task.
func TestDigestFirstAndRetries(t *testing.T) {
	s := newServer(t)
	s.down.Store(3)
	i := inv()
	d := i.Digest()
	var tasks atomic.Int32
	r1 := newReporter(t, s, "web-1", nil)
	run(t, r1, func(context.Context) (json.RawMessage, error) { tasks.Add(1); return taskJSON(i, d), nil })
	r1.Observe(d)
	waitFor(t, "the upload", func() bool { return r1.Stats().Uploads == 1 })
	if st := r1.Stats(); st.Failures != 3 || st.Digest != d || st.LastError != "" || tasks.Load() != 1 {
		t.Fatalf("first host: %+v, tasks %d", st, tasks.Load())
	}
	r2 := newReporter(t, s, "web-2", nil)
	run(t, r2, func(context.Context) (json.RawMessage, error) {
		return nil, errors.New("the task must not run for a digest the server holds")
	})
	r2.Observe(d)
	waitFor(t, "the second digest", func() bool { return r2.Stats().Digest == d })
	if st := r2.Stats(); st.Uploads != 0 || st.Failures != 0 {
		t.Fatalf("second host: %+v", st)
	}
	if st := s.svc.Stats(); st.UploadsNew != 1 || st.Index.Hosts != 2 {
		t.Fatalf("server: %+v", st)
	}
}

// TestUploadBusyAndTimeout: the server refuses the upload itself 503 busy
// (its in-flight budget is full) and then 408 (the body was too slow);
// both are retried with backoff, from the digest, until the upload is
// taken. Nothing is lost, and the counters say what happened.
func TestUploadBusyAndTimeout(t *testing.T) {
	s := newServer(t)
	s.refuseUploads <- http.StatusServiceUnavailable
	s.refuseUploads <- http.StatusRequestTimeout
	i := inv()
	d := i.Digest()
	var tasks atomic.Int32
	r := newReporter(t, s, "web-1", nil)
	run(t, r, func(context.Context) (json.RawMessage, error) { tasks.Add(1); return taskJSON(i, d), nil })
	r.Observe(d)
	// A refusal taken as permanent would wait for the refresh (hours).
	waitFor(t, "the upload", func() bool { return r.Stats().Uploads == 1 })
	st := r.Stats()
	if st.Failures != 2 || st.Digest != d || st.LastError != "" || st.DigestsSent != 3 || tasks.Load() != 3 {
		t.Fatalf("reporter: %+v, tasks %d", st, tasks.Load())
	}
	if ss := s.svc.Stats(); ss.UploadsNew != 1 || ss.Uploads != 1 || ss.UploadsRejected != 0 || ss.Index.Hosts != 1 {
		t.Fatalf("server: %+v", ss)
	}
}

// TestNoEventAsksTheTask: when no digest event arrives (dropped, or the
// plugin started before the reporter), FirstCheck asks the task.
func TestNoEventAsksTheTask(t *testing.T) {
	s := newServer(t)
	i := inv()
	r := newReporter(t, s, "web-1", func(c *Config) { c.FirstCheck = time.Millisecond })
	run(t, r, func(context.Context) (json.RawMessage, error) { return taskJSON(i, i.Digest()), nil })
	waitFor(t, "the upload", func() bool { return r.Stats().Uploads == 1 })
}

// TestRefusals: a digest mismatch is refused by the server (4xx, not
// retried in a loop), an inventory over the cap is not sent at all.
func TestRefusals(t *testing.T) {
	s := newServer(t)
	i := inv()
	good := i.Digest()
	r := newReporter(t, s, "web-1", nil)
	run(t, r, func(context.Context) (json.RawMessage, error) {
		return taskJSON(i, "sha256:"+strings.Repeat("0", 64)), nil
	})
	r.Observe(good)
	waitFor(t, "the refusal", func() bool { return r.Stats().Failures == 1 })
	if st := r.Stats(); !strings.Contains(st.LastError, "400") || !strings.Contains(st.LastError, "digest") || st.Uploads != 0 {
		t.Fatalf("after a mismatch: %+v", st)
	}

	before := s.hits.Load()
	r2 := newReporter(t, s, "web-2", func(c *Config) { c.MaxUpload = 10 })
	run(t, r2, func(context.Context) (json.RawMessage, error) { return taskJSON(i, good), nil })
	r2.Observe(good)
	waitFor(t, "the size refusal", func() bool { return r2.Stats().Failures == 1 })
	if st := r2.Stats(); !strings.Contains(st.LastError, "more than the 10 allowed") {
		t.Fatalf("oversized: %+v", st)
	}
	if n := s.hits.Load() - before; n != 1 { // the digest only
		t.Fatalf("%d requests for an oversized inventory, want 1 (the digest)", n)
	}
}

// TestTap reads the digest of vulnscan's inventory_digest events and
// passes over other plugins' batches.
func TestTap(t *testing.T) {
	r, err := New(Config{Host: "h", URL: "http://127.0.0.1:1", Client: http.DefaultClient, Plugin: "vulnscan"})
	if err != nil {
		t.Fatal(err)
	}
	rec := func(typ, digest string) []byte {
		return sdk.AppendEventRecord(nil, &sdk.Event{Type: typ, Fields: []sdk.Field{sdk.String("reason", "start"), sdk.String("digest", digest)}}, 1)
	}
	tap := r.Sink()
	b := append(rec("inventory_error", "sha256:a"), rec(EventDigest, "sha256:b")...)
	if err := tap.Write(context.Background(), &sink.Batch{Plugin: "procmon", Count: 2, Records: rec(EventDigest, "sha256:x")}); err != nil {
		t.Fatal(err)
	}
	if err := tap.Write(context.Background(), &sink.Batch{Plugin: "vulnscan", Count: 2, Records: b}); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	got := r.latest
	r.mu.Unlock()
	if got != "sha256:b" {
		t.Fatalf("latest digest %q, want sha256:b", got)
	}
}
