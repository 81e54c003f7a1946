package httpapi

import (
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vigil-hids/vigil/server/metrics"
)

func gz(t testing.TB, s string) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	if _, err := w.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	return b.Bytes()
}

func postEventsAs(h *handler, cn, target string, body []byte, gzipped bool) (int, Error) {
	r := httptest.NewRequest("POST", target, bytes.NewReader(body))
	if gzipped {
		r.Header.Set("Content-Encoding", "gzip")
	}
	ou := "host"
	if i := strings.IndexByte(cn, '/'); i >= 0 {
		cn, ou = cn[:i], cn[i+1:]
	}
	c := &x509.Certificate{Subject: pkix.Name{CommonName: cn, OrganizationalUnit: []string{ou}}}
	r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{c}}}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var e Error
	_ = json.Unmarshal(w.Body.Bytes(), &e)
	return w.Code, e
}

func TestPostEvents(t *testing.T) {
	var out bytes.Buffer
	m := metrics.NewEvents(prometheus.NewRegistry())
	h := New(Options{Events: &EventsOptions{Out: &out, MaxBody: 64 << 10, MaxDecoded: 256 << 10, Metrics: m}}).(*handler)
	ok := `{"ts":"x","host":"h1","type":"exec"}` + "\n" + `{"host":"h1","fields":{"a":1}}`
	if code, e := postEventsAs(h, "h1", "/v1/events", gz(t, ok), true); code != 200 {
		t.Fatalf("post: %d %+v", code, e)
	}
	if code, e := postEventsAs(h, "vigil-host", "/v1/events?host=h1", []byte(ok+"\n"), false); code != 200 {
		t.Fatalf("post with the shared certificate: %d %+v", code, e)
	}
	want := ok + "\n" + ok + "\n"
	if out.String() != want {
		t.Fatalf("written:\n%s\nwant:\n%s", out.String(), want)
	}
	if n := testutil.ToFloat64(m.Received); n != 4 {
		t.Fatalf("received = %v", n)
	}
	big := strings.Repeat(`{"host":"h1","pad":"`+strings.Repeat("y", 200)+`"}`+"\n", 2000) // ~430 KiB decompressed
	rnd := make([]byte, 100<<10)
	for i := range rnd {
		rnd[i] = byte(i*7919 + i>>8)
	}
	tests := []struct {
		name, cn, target string
		body             []byte
		gzip             bool
		status           int
		contains         string
	}{
		{"another host", "h1", "/v1/events", gz(t, ok+"\n"+`{"host":"h2"}`), true, 400, `line 3: host "h2" is not the posting host "h1"`},
		{"no host field", "h1", "/v1/events", []byte(`{"type":"x"}`), false, 400, `line 1: no "host" field`},
		{"not an object", "h1", "/v1/events", []byte(`["host","h1"]`), false, 400, "line 1: not a JSON object"},
		{"bad json", "h1", "/v1/events", []byte(`{"host":"h1"`), false, 400, "line 1: not a JSON object"},
		{"host param of another host", "h1", "/v1/events?host=h2", gz(t, ok), true, 403, `may not post events as host "h2"`},
		{"shared cert without host", "vigil-host", "/v1/events", gz(t, ok), true, 400, "host parameter"},
		{"admin", "alice/admin", "/v1/events", gz(t, ok), true, 403, "only hosts"},
		{"not gzip", "h1", "/v1/events", []byte(ok), true, 400, "not gzip"},
		{"compressed over the cap", "h1", "/v1/events", rnd, false, 413, "larger than 65536 bytes"},
		{"decompressed over the cap", "h1", "/v1/events", gz(t, big), true, 413, "larger than 262144 bytes decompressed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, e := postEventsAs(h, tc.cn, tc.target, tc.body, tc.gzip)
			if code != tc.status || !strings.Contains(e.Error, tc.contains) {
				t.Fatalf("got %d %+v, want %d containing %q", code, e, tc.status, tc.contains)
			}
		})
	}
	if out.String() != want {
		t.Fatal("a refused body wrote to the events file")
	}
	if n := testutil.ToFloat64(m.Refused.WithLabelValues("invalid")); n != 6 {
		t.Fatalf("refused invalid = %v", n)
	}

	// Without an events file the route answers 404 (a host's sink drops,
	// counted, rather than retrying a configuration).
	h = New(Options{}).(*handler)
	if code, e := postEventsAs(h, "h1", "/v1/events", gz(t, ok), true); code != 404 || e.Code != "disabled" {
		t.Fatalf("disabled: %d %+v", code, e)
	}
}

func FuzzCheckEvents(f *testing.F) {
	f.Add([]byte(`{"host":"h1"}`+"\n"+`{"host":"h1","a":[1,2]}`), "h1")
	f.Add([]byte("\n\n{\"host\":\"h\\u0031\"}\r\n"), "h1")
	f.Add([]byte(`{"host":null}`), "")
	f.Add([]byte(" {}"), "h")
	f.Add([]byte(`{"host":"h2","HOST":"h1"}`), "h1")
	f.Add([]byte(`{"host":"h2","ho\u017ft":"h1","a":["x",{"host":1}]}`), "h1")
	f.Add([]byte(`{"a":"\"","host":"h1","b":{"Host":2}}`), "h1")
	f.Add([]byte("{\"host\":\"h1\",\"x\":\"\xff\"}"), "h1")
	f.Fuzz(func(t *testing.T, data []byte, host string) {
		n, err := CheckEvents(data, host)
		if n < 0 || (err == nil && n > bytes.Count(data, []byte("\n"))+1) {
			t.Fatalf("n = %d, err %v", n, err)
		}
		if err != nil {
			return
		}
		if !utf8.Valid(data) {
			t.Fatalf("accepted invalid UTF-8 %q", data)
		}
		// Accepted: every line names host under "host" and under no
		// case variant, for any reader.
		for _, l := range bytes.Split(data, []byte("\n")) {
			if len(bytes.TrimSpace(l)) == 0 {
				continue
			}
			var m map[string]any
			if err := json.Unmarshal(l, &m); err != nil || m["host"] != host {
				t.Fatalf("accepted line %q: %v, host %v", l, err, m["host"])
			}
			for k := range m {
				if k != "host" && strings.EqualFold(k, "host") {
					t.Fatalf("accepted line %q has key %q", l, k)
				}
			}
		}
	})
}
