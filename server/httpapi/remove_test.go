package httpapi

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server/artifacts"
	"github.com/vigil-hids/vigil/server/rollout"
	"github.com/vigil-hids/vigil/server/store"
	"github.com/vigil-hids/vigil/signing"
)

// releaseAPI is the API over a store and an artifact store on embedded
// etcd, with example 1.0.0 published (signed by a fresh key); send calls
// it as a certificate of the role.
type releaseAPI struct {
	e    *etcdtest.Embedded
	st   *store.Store
	arts *artifacts.Store
	h    http.Handler
}

func newReleaseAPI(t *testing.T) *releaseAPI {
	t.Helper()
	e := etcdtest.StartEmbedded(t)
	st := store.New(e.Client(t), store.Options{Validate: catalog.Validate})
	arts, err := artifacts.Open(artifacts.Config{Dir: t.TempDir(), MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	a := &releaseAPI{e: e, st: st, arts: arts,
		h: New(Options{Store: st, Releases: &ReleaseOptions{Artifacts: arts, Rollout: rollout.New(rollout.Options{Store: st})}})}
	_, sec, _ := signing.GenerateKey(nil)
	bin := "binary of example 1.0.0"
	ctype, body := upload(t, PartManifest, signedManifest(t, sec, []byte(bin), time.Now().Add(time.Hour)), PartBinary, bin)
	if code, out := a.send("admin", "POST", "/v1/releases", body, ctype); code != 200 {
		t.Fatalf("publish: %d %s", code, out)
	}
	return a
}

func (a *releaseAPI) send(role, method, path string, body []byte, ctype string) (int, string) {
	r := httptest.NewRequest(method, path, bytes.NewReader(body))
	if ctype != "" {
		r.Header.Set("Content-Type", ctype)
	}
	c := &x509.Certificate{Subject: pkix.Name{CommonName: role + "-alice", OrganizationalUnit: []string{role}}}
	r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{c}}}
	w := httptest.NewRecorder()
	a.h.ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

func TestRemoveAndCollectRoutes(t *testing.T) {
	a := newReleaseAPI(t)
	st, arts, send := a.st, a.arts, a.send
	sha := ""
	if list, _ := arts.List(); len(list) == 1 {
		sha = list[0].SHA256
	}
	old := time.Now().Add(-3 * time.Hour)
	if err := os.Chtimes(arts.Path(sha), old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Set(t.Context(), store.Write{Scope: api.Scope{Kind: api.ScopeFleet}, Author: "a",
		State: api.DesiredState{Plugins: map[string]api.PluginState{"example": {Version: "1.0.0"}}}}); err != nil {
		t.Fatal(err)
	}
	unpin := func() {
		if _, err := st.Set(t.Context(), store.Write{Scope: api.Scope{Kind: api.ScopeFleet}, Author: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, role, method, path string
		before                   func()
		status                   int
		contains                 string
	}{
		{"operator may not remove", "operator", "DELETE", "/v1/releases/example/1.0.0?comment=x", nil, 403, "releases are published by admins"},
		{"no comment", "admin", "DELETE", "/v1/releases/example/1.0.0", nil, 400, "needs a comment"},
		{"os without arch", "admin", "DELETE", "/v1/releases/example/1.0.0?os=linux&comment=x", nil, 400, "os and arch go together"},
		{"asked for by the fleet", "admin", "DELETE", "/v1/releases/example/1.0.0?comment=x", nil, 409, "fleet (version)"},
		{"gc keeps a named artifact", "admin", "POST", "/v1/artifacts/gc", nil, 200, `"named": 1`},
		{"removed", "admin", "DELETE", "/v1/releases/example/1.0.0?comment=compromised", unpin, 200, `"removed_by": "admin-alice"`},
		{"removed twice", "admin", "DELETE", "/v1/releases/example/1.0.0?comment=x", nil, 404, "not published on any platform"},
		{"auditor lists records", "auditor", "GET", "/v1/releases-removed?plugin=example", nil, 200, `"comment": "compromised"`},
		{"hosts do not", "host", "GET", "/v1/releases-removed", nil, 403, "may not read"},
		{"operator may not gc", "operator", "POST", "/v1/artifacts/gc", nil, 403, "releases are published by admins"},
		{"grace too short", "admin", "POST", "/v1/artifacts/gc?grace=1s", nil, 400, "grace must be at least 1m0s"},
		{"bad dry_run", "admin", "POST", "/v1/artifacts/gc?dry_run=perhaps", nil, 400, "dry_run must be true or false"},
		{"dry run", "admin", "POST", "/v1/artifacts/gc?dry_run=true&grace=2h", nil, 200, `"bytes_freed": 23`},
		{"gc", "admin", "POST", "/v1/artifacts/gc?grace=2h", nil, 200, `"bytes_freed": 23`},
		{"gc again", "admin", "POST", "/v1/artifacts/gc", nil, 200, `"bytes_freed": 0`},
	}
	for _, tt := range tests {
		if tt.before != nil {
			tt.before()
		}
		status, out := send(tt.role, tt.method, tt.path, nil, "")
		if status != tt.status || !strings.Contains(out, tt.contains) {
			t.Fatalf("%s: got %d %s, want %d containing %q", tt.name, status, out, tt.status, tt.contains)
		}
		if tt.name == "dry run" {
			var rep artifacts.GCReport
			if err := json.Unmarshal([]byte(out), &rep); err != nil || !rep.DryRun || len(rep.Removed) != 1 || rep.Removed[0].SHA256 != sha {
				t.Fatalf("dry run report: %+v %v", rep, err)
			}
			if _, err := arts.Stat(sha); err != nil {
				t.Fatalf("dry run removed the artifact: %v", err)
			}
		}
	}
	if _, err := arts.Stat(sha); err == nil {
		t.Fatal("gc kept the artifact of the removed release")
	}
}

// TestConfigSetNamesPublishedVersions: config set may name a release
// version only once it is published; a version the scope's document named
// already does not block an unrelated edit after it was removed.
func TestConfigSetNamesPublishedVersions(t *testing.T) {
	a := newReleaseAPI(t)
	for _, tt := range []struct {
		name, doc string
		before    func()
		status    int
		contains  string
	}{
		{"unpublished version", `{"plugins":{"example":{"version":"9.9.9"}}}`, nil, 400, "plugins.example.version 9.9.9: rollout: no such release: example 9.9.9 is not published on any platform"},
		{"unpublished rollout from", `{"plugins":{"example":{"version":"1.0.0","rollout":{"percent":10,"from":"0.5.0"}}}}`, nil, 400, "plugins.example.rollout.from 0.5.0"},
		{"unpublished host version", `{"host_version":"7.0.0"}`, nil, 400, "host_version 7.0.0"},
		{"published version", `{"plugins":{"example":{"version":"1.0.0"}}}`, nil, 200, `"seq": 1`},
		// Removed behind the server's back (rm itself refuses while a
		// document asks for it): an unrelated edit still lands.
		{"unrelated edit", `{"log_level":"debug","plugins":{"example":{"version":"1.0.0"}}}`, func() {
			if _, err := a.e.Client(t).Delete(t.Context(), api.NewKeyspace("").ReleaseVersion("example", "1.0.0"), clientv3.WithPrefix()); err != nil {
				t.Fatal(err)
			}
		}, 200, `"seq": 2`},
		{"but not a new name", `{"log_level":"debug","plugins":{"example":{"version":"1.0.0"},"procmon":{"version":"1.0.0"}}}`, nil, 400, "plugins.procmon.version 1.0.0"},
	} {
		if tt.before != nil {
			tt.before()
		}
		status, out := a.send("admin", "PUT", "/v1/config?scope=fleet&comment=x", []byte(tt.doc), "")
		if status != tt.status || !strings.Contains(out, tt.contains) {
			t.Fatalf("%s: got %d %s, want %d containing %q", tt.name, status, out, tt.status, tt.contains)
		}
	}
}
