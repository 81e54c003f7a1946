package server

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
)

func TestReleaseSetup(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	start := func(rc ReleaseConfig) (*Server, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := Start(ctx, Config{Listen: "127.0.0.1:0", EtcdEndpoints: e.Endpoints(), Insecure: true,
			CheckPlugin: catalog.Validate, Releases: rc})
		if s != nil {
			t.Cleanup(s.Close)
		}
		return s, err
	}
	get := func(s *Server, path string) (int, string) {
		resp, err := http.Get("http://" + s.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	// An external etcd and no data dir: nowhere to keep artifacts, so no
	// release routes.
	s, err := start(ReleaseConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := get(s, "/v1/releases"); code != http.StatusNotFound {
		t.Fatalf("release routes without an artifact dir: %d", code)
	}
	s.Close()

	dir := t.TempDir()
	if _, err := start(ReleaseConfig{ArtifactDir: dir, TrustFile: filepath.Join(dir, "nosuch.json")}); err == nil ||
		!strings.Contains(err.Error(), "release-trust") {
		t.Fatalf("missing trust file: %v", err)
	}
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := start(ReleaseConfig{ArtifactDir: dir, TrustFile: bad}); err == nil || !strings.Contains(err.Error(), "release-trust "+bad) {
		t.Fatalf("malformed trust file: %v", err)
	}
	s, err = start(ReleaseConfig{ArtifactDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if code, body := get(s, "/v1/releases"); code != 200 || !strings.Contains(body, `"releases": []`) {
		t.Fatalf("releases: %d %s", code, body)
	}
	if _, err := os.Stat(filepath.Join(dir, "sha256")); err != nil {
		t.Fatalf("artifact store not created: %v", err)
	}
	if got := (Config{DataDir: "/d"}).artifactDir(); got != "/d/artifacts" {
		t.Fatalf("default artifact dir = %q", got)
	}
}
