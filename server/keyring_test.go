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
	"github.com/vigil-hids/vigil/signing"
)

// TestKeyringSetup: the keyring routes need no artifact store, and a
// --release-roots file that is missing or malformed stops the start.
func TestKeyringSetup(t *testing.T) {
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
	dir := t.TempDir()
	if _, err := start(ReleaseConfig{RootsFile: filepath.Join(dir, "nosuch.json")}); err == nil ||
		!strings.Contains(err.Error(), "release-roots") {
		t.Fatalf("missing roots file: %v", err)
	}
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"threshold":1,"keys":[],"extra":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := start(ReleaseConfig{RootsFile: bad}); err == nil || !strings.Contains(err.Error(), "release-roots "+bad) {
		t.Fatalf("malformed roots file: %v", err)
	}
	pub, _, _ := signing.GenerateKey(nil)
	good := filepath.Join(dir, "roots.json")
	if err := os.WriteFile(good, []byte(`{"threshold":1,"keys":["`+pub.String()+`"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := start(ReleaseConfig{RootsFile: good})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.Addr() + "/v1/keyring")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(b), "no keyring published") {
		t.Fatalf("GET /v1/keyring without an artifact dir: %d %s", resp.StatusCode, b)
	}
}
