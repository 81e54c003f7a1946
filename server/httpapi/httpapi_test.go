package httpapi

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server/store"
)

// request sends one request as the identity cn/ou (as a verified client
// certificate would present it; "" means no certificate).
func request(h http.Handler, cn, ou, method, target, body string) (int, Error) {
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	if cn != "" {
		c := &x509.Certificate{Subject: pkix.Name{CommonName: cn, OrganizationalUnit: []string{ou}}}
		r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{c}}}
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var e Error
	_ = json.Unmarshal(w.Body.Bytes(), &e)
	return w.Code, e
}

func TestStatusCodes(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	h := New(Options{Store: store.New(e.Client(t), store.Options{Validate: catalog.Validate})})
	if code, _ := request(h, "alice", "admin", "PUT", "/v1/config?scope=host:a", "log_level: info"); code != 200 {
		t.Fatalf("first write: %d", code)
	}
	tests := []struct {
		name     string
		cn, ou   string
		method   string
		target   string
		body     string
		status   int
		code     string
		contains string
	}{
		{name: "no certificate", method: "GET", target: "/v1/config", status: 401, code: "unauthenticated", contains: "client certificate"},
		{name: "unknown role", cn: "x", ou: "root", method: "GET", target: "/v1/config", status: 401, code: "unauthenticated", contains: `unknown role "root"`},
		{name: "stale if_revision", cn: "alice", ou: "admin", method: "PUT", target: "/v1/config?scope=host:a&if_revision=1", body: "{}",
			status: 409, code: "conflict", contains: "changed by alice (seq 1"},
		{name: "bad if_revision", cn: "alice", ou: "admin", method: "PUT", target: "/v1/config?scope=host:a&if_revision=x", body: "{}",
			status: 400, code: "invalid", contains: "if_revision must be a non-negative integer"},
		{name: "body over the input cap", cn: "alice", ou: "admin", method: "PUT", target: "/v1/config?scope=host:a",
			body: strings.Repeat(" ", 9<<20), status: 413, code: "too_large"},
		{name: "missing history seq", cn: "alice", ou: "admin", method: "POST", target: "/v1/config/rollback?scope=host:a&to=9",
			status: 404, code: "not_found", contains: "no history record 9"},
		{name: "progress needs a revision", cn: "a", ou: "auditor", method: "GET", target: "/v1/fleet/progress", status: 400, code: "invalid"},
		{name: "bad selector", cn: "a", ou: "auditor", method: "GET", target: "/v1/agents?label=env", status: 400, code: "invalid"},
		{name: "operator cannot write fleet", cn: "bob", ou: "operator", method: "PUT", target: "/v1/config", body: "{}",
			status: 403, code: "forbidden", contains: `role "operator" (bob) may not write /hids/server/config/_fleet/master`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, e := request(h, tt.cn, tt.ou, tt.method, tt.target, tt.body)
			if status != tt.status || e.Code != tt.code || !strings.Contains(e.Error, tt.contains) {
				t.Fatalf("got %d %+v, want %d %s containing %q", status, e, tt.status, tt.code, tt.contains)
			}
		})
	}
}
