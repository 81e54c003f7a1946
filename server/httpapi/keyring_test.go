package httpapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server/rollout"
	"github.com/vigil-hids/vigil/server/store"
	"github.com/vigil-hids/vigil/signing"
)

// keyringJSON is a keyring.json of serial listing release, signed by roots.
func keyringJSON(t *testing.T, serial uint64, expires time.Time, release minisign.PublicKey, roots ...minisign.PrivateKey) string {
	t.Helper()
	kr := signing.SignedKeyring{Keyring: signing.Keyring{Serial: serial, Expires: expires, Threshold: 1,
		Keys: []string{release.String()}}, Signatures: []signing.Signature{}}
	for _, r := range roots {
		if err := kr.Sign(r); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := kr.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

func TestKeyringRoutes(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	st := store.New(cli, store.Options{Validate: catalog.Validate})
	rootPub, rootSec, _ := signing.GenerateKey(nil)
	_, stranger, _ := signing.GenerateKey(nil)
	relPub, _, _ := signing.GenerateKey(nil)
	roots, err := signing.NewTrust(1, rootPub)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)
	h := New(Options{Store: st, Keyring: &KeyringOptions{Keyrings: rollout.NewKeyrings(rollout.KeyringOptions{Store: st, Roots: &roots,
		Now: func() time.Time { return now }})}})
	day := now.Add(24 * time.Hour)
	v1 := keyringJSON(t, 1, day, relPub, rootSec)
	v2 := keyringJSON(t, 2, day, relPub, rootSec)

	var unknown map[string]any
	_ = json.Unmarshal([]byte(v1), &unknown)
	unknown["extra"] = true
	unknownRaw, _ := json.Marshal(unknown)

	tests := []struct {
		name     string
		cn, ou   string
		method   string
		target   string
		body     string
		status   int
		contains string
	}{
		{name: "nothing published", cn: "web-1", ou: "host", method: "GET", target: "/v1/keyring", status: 404, contains: "no keyring published"},
		{name: "operator may not publish", cn: "olga", ou: "operator", method: "PUT", target: "/v1/keyring", body: v1, status: 403},
		{name: "auditor may not publish", cn: "audrey", ou: "auditor", method: "PUT", target: "/v1/keyring", body: v1, status: 403},
		{name: "host may not publish", cn: "web-1", ou: "host", method: "PUT", target: "/v1/keyring", body: v1, status: 403},
		{name: "empty body", cn: "alice", ou: "admin", method: "PUT", target: "/v1/keyring", status: 400, contains: "malformed"},
		{name: "malformed json", cn: "alice", ou: "admin", method: "PUT", target: "/v1/keyring", body: `{"keyring":`, status: 400,
			contains: "malformed"},
		{name: "unknown field", cn: "alice", ou: "admin", method: "PUT", target: "/v1/keyring", body: string(unknownRaw), status: 400,
			contains: `unknown field "extra"`},
		{name: "expired", cn: "alice", ou: "admin", method: "PUT", target: "/v1/keyring", body: keyringJSON(t, 1, now, relPub, rootSec),
			status: 400, contains: "expired"},
		{name: "unsigned", cn: "alice", ou: "admin", method: "PUT", target: "/v1/keyring", body: keyringJSON(t, 1, day, relPub),
			status: 400, contains: "--release-roots"},
		{name: "signed by a stranger", cn: "alice", ou: "admin", method: "PUT", target: "/v1/keyring",
			body: keyringJSON(t, 1, day, relPub, stranger), status: 400, contains: "not signed by enough root keys"},
		{name: "too large", cn: "alice", ou: "admin", method: "PUT", target: "/v1/keyring", body: strings.Repeat(" ", maxKeyring+1),
			status: 413, contains: "too_large"},
		{name: "publish serial 2", cn: "alice", ou: "admin", method: "PUT", target: "/v1/keyring", body: v2, status: 200},
		{name: "same bytes", cn: "bob", ou: "admin", method: "PUT", target: "/v1/keyring", body: v2, status: 200},
		{name: "lower serial", cn: "alice", ou: "admin", method: "PUT", target: "/v1/keyring", body: v1, status: 409,
			contains: "keyring serial 1 is lower than serial 2"},
		{name: "auditor reads", cn: "audrey", ou: "auditor", method: "GET", target: "/v1/keyring", status: 200},
		{name: "host reads history", cn: "web-1", ou: "host", method: "GET", target: "/v1/keyring/history", status: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, e := request(h, tt.cn, tt.ou, tt.method, tt.target, tt.body)
			if code != tt.status || !strings.Contains(e.Error+"|"+e.Code, tt.contains) {
				t.Fatalf("got %d %+v, want %d containing %q", code, e, tt.status, tt.contains)
			}
		})
	}

	// etcd holds serial 2 byte for byte, and the record names alice.
	resp, err := cli.Get(context.Background(), st.Keyspace().Keyring())
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != v2 {
		t.Fatalf("etcd holds %v, %v; want serial 2 as uploaded", resp, err)
	}
	var info api.KeyringInfo
	getJSON(t, h, "/v1/keyring", &info)
	if info.Serial != 2 || info.PublishedBy != "alice" || info.Revision != resp.Kvs[0].ModRevision ||
		len(info.KeyIDs) != 1 || info.KeyIDs[0] != signing.KeyID(relPub.ID()) ||
		len(info.RootSigners) != 1 || info.RootSigners[0] != signing.KeyID(rootPub.ID()) {
		t.Fatalf("GET /v1/keyring = %+v", info)
	}
	var hist KeyringHistory
	getJSON(t, h, "/v1/keyring/history", &hist)
	if len(hist.Records) != 1 || hist.Records[0].Serial != 2 || hist.Records[0].PublishedBy != "alice" {
		t.Fatalf("history = %+v", hist)
	}
}

func getJSON(t *testing.T, h http.Handler, target string, out any) {
	t.Helper()
	r := httptest.NewRequest("GET", target, nil)
	c := &x509.Certificate{Subject: pkix.Name{CommonName: "audrey", OrganizationalUnit: []string{"auditor"}}}
	r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{c}}}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", target, w.Code, w.Body)
	}
	if err := json.Unmarshal(w.Body.Bytes(), out); err != nil {
		t.Fatal(err)
	}
}

// TestKeyringHistoryDamagedRecord: GET /v1/keyring/history answers 200
// with every record that decodes when one under the history prefix
// cannot be decoded (written around the server); the damaged one is an
// entry naming its key and the decode error.
func TestKeyringHistoryDamagedRecord(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	st := store.New(cli, store.Options{Validate: catalog.Validate})
	rootPub, rootSec, _ := signing.GenerateKey(nil)
	relPub, _, _ := signing.GenerateKey(nil)
	roots, err := signing.NewTrust(1, rootPub)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)
	h := New(Options{Store: st, Keyring: &KeyringOptions{Keyrings: rollout.NewKeyrings(rollout.KeyringOptions{Store: st, Roots: &roots,
		Now: func() time.Time { return now }})}})
	for serial := uint64(1); serial <= 2; serial++ {
		if code, e := request(h, "alice", "admin", "PUT", "/v1/keyring", keyringJSON(t, serial, now.Add(24*time.Hour), relPub, rootSec)); code != 200 {
			t.Fatalf("publish serial %d: %d %+v", serial, code, e)
		}
	}
	bad := st.Keyspace().KeyringRecordKey(1)
	if _, err := cli.Put(context.Background(), bad, "\x00not json"); err != nil {
		t.Fatal(err)
	}
	var hist KeyringHistory
	getJSON(t, h, "/v1/keyring/history", &hist)
	if len(hist.Records) != 2 {
		t.Fatalf("want 2 entries, got %+v", hist)
	}
	if r := hist.Records[0]; r.Serial != 1 || r.Key != bad || !strings.Contains(r.Error, "unreadable record: invalid character") {
		t.Fatalf("damaged serial 1: %+v", r)
	}
	if r := hist.Records[1]; r.Serial != 2 || r.PublishedBy != "alice" || r.Error != "" || r.Key != "" {
		t.Fatalf("serial 2: %+v", r)
	}
}
