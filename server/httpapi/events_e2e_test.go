package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/vigil-hids/vigil/host/config"
	"github.com/vigil-hids/vigil/host/sink"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/server"
	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/server/pki"
)

// fleet is a real vigil-server with TLS, restartable on the same address,
// etcd ports and data dir.
type fleet struct {
	t               testing.TB
	pki, data, addr string
	etcd            []int
	srv             *server.Server
}

func newFleet(t testing.TB) *fleet {
	dir := t.TempDir()
	f := &fleet{t: t, pki: filepath.Join(dir, "pki"), data: filepath.Join(dir, "data"), addr: "127.0.0.1:0"}
	ids := append(append([]pki.Identity{}, pki.DefaultIdentities...), pki.Identity{Name: "h1", Role: "host", File: "h1"})
	if _, err := pki.Init(f.pki, pki.Options{Identities: ids}); err != nil {
		t.Fatal(err)
	}
	ports, err := etcdtest.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	f.etcd = ports
	f.start()
	t.Cleanup(f.stop)
	return f
}

func (f *fleet) start() {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := server.Start(ctx, server.Config{ID: "r1", Listen: f.addr, DataDir: f.data,
		EtcdClientURL: fmt.Sprintf("http://127.0.0.1:%d", f.etcd[0]), EtcdPeerURL: fmt.Sprintf("http://127.0.0.1:%d", f.etcd[1]),
		TLS: f.files("server"), CheckPlugin: catalog.Validate})
	if err != nil {
		f.t.Fatal(err)
	}
	f.srv, f.addr = s, s.Addr()
}

func (f *fleet) stop() {
	if f.srv != nil {
		f.srv.Close()
		f.srv = nil
	}
}

func (f *fleet) files(n string) pki.Files {
	return pki.Files{CA: filepath.Join(f.pki, "ca.crt"), Cert: filepath.Join(f.pki, n+".crt"), Key: filepath.Join(f.pki, n+".key")}
}

func (f *fleet) url() string { return "https://" + f.addr }

// client is the host's server link with the identity's certificate.
func (f *fleet) client(id string) *http.Client {
	fs := f.files(id)
	hc, err := config.Server{URL: f.url(), CAFile: fs.CA, CertFile: fs.Cert, KeyFile: fs.Key}.HTTPClient(0)
	if err != nil {
		f.t.Fatal(err)
	}
	return hc
}

// lines reads the server's events file.
func (f *fleet) lines() []map[string]any {
	f.t.Helper()
	b, err := os.ReadFile(filepath.Join(f.data, "events", "events.ndjson"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		f.t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			f.t.Fatalf("events file line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func batch(n, seq int) *sink.Batch {
	var recs []byte
	for i := range n {
		recs = sdk.AppendEventRecord(recs, &sdk.Event{Type: "exec", Severity: sdk.SevInfo, Fields: []sdk.Field{
			sdk.Int("seq", int64(seq*n+i)), sdk.String("exe", "/usr/bin/ls"), sdk.String("cmdline", strings.Repeat("x", 150)),
		}}, time.Now().UnixNano())
	}
	return &sink.Batch{Plugin: "procmon", Version: "1.0.0", Count: n, Records: recs}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// exact checks Accepted = Delivered + Pending + sum(Lost).
func exact(t *testing.T, c sink.Counts) {
	t.Helper()
	sum := c.Delivered + c.Pending
	for _, v := range c.Lost {
		sum += v
	}
	if sum != c.Accepted {
		t.Fatalf("counts not exact: %+v", c)
	}
}

// TestServerSinkToRealServer sends events from the host's server sink to a
// real vigil-server over TLS, stops the server until the queue is full,
// and starts it again.
func TestServerSinkToRealServer(t *testing.T) {
	f := newFleet(t)
	s, err := sink.NewServer(sink.ServerConfig{QueueMB: 1, BatchKB: 64, FlushInterval: 20 * time.Millisecond}, "h1", f.client("h1"), f.url(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	seq := 0
	for range 5 {
		if err := s.Write(ctx, batch(100, seq)); err != nil {
			t.Fatal(err)
		}
		seq++
	}
	waitFor(t, "500 events delivered", func() bool { c := s.Counts(); exact(t, c); return c.Delivered == 500 })
	ls := f.lines()
	if len(ls) != 500 {
		t.Fatalf("events file has %d lines, want 500", len(ls))
	}
	for _, l := range ls {
		if l["host"] != "h1" || l["plugin"] != "procmon" {
			t.Fatalf("line %v", l)
		}
	}

	// Server down: Write takes batches until the queue is full, then
	// refuses; nothing is lost and the counts stay exact.
	f.stop()
	accepted := uint64(500)
	for {
		err := s.Write(ctx, batch(100, seq))
		if err != nil {
			if !errors.Is(err, sink.ErrQueueFull) {
				t.Fatalf("Write with the server down: %v", err)
			}
			break
		}
		seq++
		accepted += 100
		c := s.Counts()
		exact(t, c)
		if c.Accepted != accepted {
			t.Fatalf("accepted %d, want %d", c.Accepted, accepted)
		}
		if accepted > 100_000 {
			t.Fatal("queue never filled")
		}
	}
	c := s.Counts()
	exact(t, c)
	if len(c.Lost) != 0 || c.Pending == 0 || c.Accepted != accepted {
		t.Fatalf("counts with the server down: %+v", c)
	}
	waitFor(t, "the delivery error", func() bool { return strings.Contains(s.Counts().LastError, "connection refused") })
	t.Logf("queue full after %d events: %+v", accepted, c)

	// Server back: the queued events arrive.
	f.start()
	waitFor(t, "queued events delivered", func() bool { c := s.Counts(); exact(t, c); return c.Delivered == accepted })
	if n := len(f.lines()); uint64(n) != accepted {
		t.Fatalf("events file has %d lines, want %d", n, accepted)
	}
	if err := s.Write(ctx, batch(10, seq)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	c = s.Counts()
	exact(t, c)
	if c.Pending != 0 || c.Delivered+c.Lost[sink.LostShutdown] != accepted+10 {
		t.Fatalf("after Close: %+v", c)
	}
	if err := s.Write(ctx, batch(1, 0)); !errors.Is(err, sink.ErrClosed) {
		t.Fatalf("Write after Close = %v", err)
	}
}

// TestServerSinkRejectedAndShutdown: a host certificate cannot post as
// another host (the loss is counted as rejected), and what is queued when
// Close finds the server down is counted as lost at shutdown.
func TestServerSinkRejectedAndShutdown(t *testing.T) {
	f := newFleet(t)
	ctx := context.Background()
	s, err := sink.NewServer(sink.ServerConfig{FlushInterval: 20 * time.Millisecond}, "h2", f.client("h1"), f.url(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, batch(50, 0)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "rejection", func() bool { c := s.Counts(); exact(t, c); return c.Lost[sink.LostRejected] == 50 })
	if c := s.Counts(); !strings.Contains(c.LastError, "403") || c.Delivered != 0 {
		t.Fatalf("counts: %+v", c)
	}
	_ = s.Close()
	if n := len(f.lines()); n != 0 {
		t.Fatalf("events file has %d lines, want none", n)
	}

	// Close with the server down: the queued events are lost at shutdown.
	s, err = sink.NewServer(sink.ServerConfig{FlushInterval: time.Minute}, "h3", f.client("host"), f.url(), nil)
	if err != nil {
		t.Fatal(err)
	}
	f.stop()
	if err := s.Write(ctx, batch(30, 0)); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	c := s.Counts()
	exact(t, c)
	if c.Lost[sink.LostShutdown] != 30 || c.Pending != 0 {
		t.Fatalf("after Close with the server down: %+v", c)
	}
}

// postRaw posts body (plain NDJSON) to /v1/events with hc and returns the
// status and the answer (its error, if any).
func postRaw(t *testing.T, hc *http.Client, url, body string) (int, string) {
	t.Helper()
	resp, err := hc.Post(url+"/v1/events", "application/x-ndjson", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e struct{ Error string }
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return resp.StatusCode, e.Error
	}
	return resp.StatusCode, string(b)
}

// TestEventsHostSpoofing: a line must carry its host under the key "host"
// exactly once. encoding/json matches keys case-insensitively and keeps
// the last of duplicate keys, so without this check a host's line could
// read "host":"h2" to every other reader of the events file.
func TestEventsHostSpoofing(t *testing.T) {
	f := newFleet(t)
	hc := f.client("h1")
	for _, tc := range []struct{ name, line, want string }{
		{"duplicate key", `{"host":"h2","host":"h1"}`, `line 1: "host" appears twice`},
		{"case variant after", `{"host":"h2","HOST":"h1"}`, `line 1: key "HOST" is a case variant of "host"`},
		{"case variant alone", `{"Host":"h1"}`, `line 1: key "Host" is a case variant of "host"`},
		{"unicode fold", `{"host":"h2","ho\u017ft":"h1"}`, `line 1: key "hoſt" is a case variant of "host"`},
		{"escaped duplicate", `{"host":"h2","\u0068ost":"h1"}`, `line 1: "host" appears twice`},
		{"second line", `{"host":"h1"}` + "\n" + `{"a":{"host":"x"},"host":"h1","Host":"h1"}`, `line 2: key "Host"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := postRaw(t, hc, f.url(), tc.line)
			if code != http.StatusBadRequest || !strings.Contains(body, tc.want) {
				t.Fatalf("got %d %s, want 400 containing %q", code, body, tc.want)
			}
		})
	}
	if n := len(f.lines()); n != 0 {
		t.Fatalf("events file has %d lines, want none", n)
	}
	// Nested "host" keys and other fields are the event's own business.
	if code, body := postRaw(t, hc, f.url(), `{"fields":{"host":"x","Host":"y"},"host":"h1","hostname":"h9"}`); code != 200 {
		t.Fatalf("valid line: %d %s", code, body)
	}
}

// apiServer serves httpapi.New with events opts (Out: a real rotated file
// in a temporary dir) behind the server's TLS with client certificates, as
// vigil-server does; it returns the address and h1's client TLS config.
func apiServer(t *testing.T, ev httpapi.EventsOptions) (string, *tls.Config) {
	dir := t.TempDir()
	ids := append(append([]pki.Identity{}, pki.DefaultIdentities...), pki.Identity{Name: "h1", Role: "host", File: "h1"})
	if _, err := pki.Init(dir, pki.Options{Identities: ids}); err != nil {
		t.Fatal(err)
	}
	files := func(n string) pki.Files {
		return pki.Files{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, n+".crt"), Key: filepath.Join(dir, n+".key")}
	}
	out := &lumberjack.Logger{Filename: filepath.Join(dir, "events", "events.ndjson"), MaxSize: server.MinEventsMaxMB}
	t.Cleanup(func() { _ = out.Close() })
	ev.Out = out
	return serveTLS(t, files, httpapi.Options{Events: &ev}, "h1")
}

// serveTLS serves httpapi.New(opts) on a loopback port behind the server
// certificate of files, asking for client certificates as vigil-server
// does; it returns the address and the client TLS config of identity
// client.
func serveTLS(t *testing.T, files func(string) pki.Files, opts httpapi.Options, client string) (string, *tls.Config) {
	t.Helper()
	stc, err := files("server").ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: httpapi.New(opts), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(tls.NewListener(ln, stc)) }()
	t.Cleanup(func() { _ = srv.Close() })
	ctc, err := files(client).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return ln.Addr().String(), ctc
}

// TestEventsBodyTimeout: a host that sends a POST's headers and then stalls
// its body does not hold the handler (and its buffer) forever: it is
// answered 408 once the body timeout passes.
func TestEventsBodyTimeout(t *testing.T) {
	addr, ctc := apiServer(t, httpapi.EventsOptions{BodyTimeout: 3 * time.Second})
	conn, err := tls.Dial("tcp", addr, ctc)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "POST /v1/events HTTP/1.1\r\nHost: vigil\r\nContent-Length: 1000\r\n\r\n{\"host\":"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(time.Minute)) // a failure bound, not a measure
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	defer resp.Body.Close()
	var e httpapi.Error
	_ = json.NewDecoder(resp.Body).Decode(&e)
	if resp.StatusCode != http.StatusRequestTimeout || e.Code != "timeout" || !strings.Contains(e.Error, "body not received within 3s") {
		t.Fatalf("got %d %+v", resp.StatusCode, e)
	}

	// A body sent in time is taken.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ctc}}
	defer hc.CloseIdleConnections()
	if code, msg := postRaw(t, hc, "https://"+addr, `{"host":"h1"}`); code != 200 {
		t.Fatalf("post: %d %s", code, msg)
	}
}

// TestEventsInvalidUTF8: encoding/json takes invalid UTF-8 in a string
// (reading it as U+FFFD), but the line is written as sent, and readers that
// hold JSON to UTF-8 fail on it. The host's sink never sends any (it writes
// \ufffd), so such a line is refused.
func TestEventsInvalidUTF8(t *testing.T) {
	f := newFleet(t)
	hc := f.client("h1")
	body := `{"host":"h1","a":"ok"}` + "\n" + `{"host":"h1","cmdline":"ls ` + "\xff\xfe" + `"}`
	if code, msg := postRaw(t, hc, f.url(), body); code != http.StatusBadRequest || !strings.Contains(msg, "line 2: not valid UTF-8") {
		t.Fatalf("got %d %s", code, msg)
	}
	if n := len(f.lines()); n != 0 {
		t.Fatalf("events file has %d lines, want none", n)
	}
}

// TestEventsInFlightBudget: the decoded bodies held at once are bounded
// server-wide, whatever the number of connections (a body of 64 KiB of
// gzip can decode to 64 MiB). With one host's body stalled after most of
// the budget, one of the two bodies is refused 503 busy (the other host's,
// or the stalled one if the other was being read while it grew); once the
// stalled body is gone, the other is taken.
func TestEventsInFlightBudget(t *testing.T) {
	addr, ctc := apiServer(t, httpapi.EventsOptions{MaxDecoded: 1 << 20, MaxInFlight: 1 << 20, BodyTimeout: 10 * time.Minute})
	line := `{"host":"h1","pad":"` + strings.Repeat("p", 1000) + `"}` + "\n"
	// The stalled body: 800 lines sent, 400 kB more declared (more than
	// net/http discards before it answers, so a refusal reaches it).
	conn, err := tls.Dial("tcp", addr, ctc)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "POST /v1/events HTTP/1.1\r\nHost: vigil\r\nContent-Length: %d\r\n\r\n%s", 800*len(line)+400_000, strings.Repeat(line, 800)); err != nil {
		t.Fatal(err)
	}
	stalled := make(chan string, 1)
	go func() {
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			stalled <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		stalled <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ctc}}
	defer hc.CloseIdleConnections()
	other := strings.Repeat(line, 300)
	var refused string
	waitFor(t, "a body refused busy", func() bool {
		select {
		case refused = <-stalled:
			t.Logf("the stalled body was refused")
			return true
		default:
		}
		code, msg := postRaw(t, hc, "https://"+addr, other)
		if code != 200 && code != http.StatusServiceUnavailable {
			t.Fatalf("post: %d %s", code, msg)
		}
		refused = fmt.Sprintf("%d %s", code, msg)
		return code == http.StatusServiceUnavailable
	})
	if !strings.HasPrefix(refused, "503 ") || !strings.Contains(refused, "server busy") {
		t.Fatalf("refusal: %s", refused)
	}
	_ = conn.Close() // the stalled body fails and frees its share
	waitFor(t, "the body taken", func() bool {
		code, msg := postRaw(t, hc, "https://"+addr, other)
		if code != 200 && code != http.StatusServiceUnavailable {
			t.Fatalf("post: %d %s", code, msg)
		}
		return code == 200
	})
}
