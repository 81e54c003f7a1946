package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"aead.dev/minisign"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/config"
	"github.com/vigil-hids/vigil/host/control"
	"github.com/vigil-hids/vigil/host/supervisor"
	"github.com/vigil-hids/vigil/host/update"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/signing"
)

var crashOnce sync.Once

// crashPlugin builds host/update's crashing release (passes the handshake,
// dies 300 ms into Run) into binDir.
func crashPlugin(t *testing.T) string {
	t.Helper()
	crashOnce.Do(func() {
		b := exec.Command("go", "build", "-o", binDir+"/", "../update/testdata/crashplugin")
		b.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := b.CombinedOutput(); err != nil {
			t.Fatalf("building crashplugin: %v\n%s", err, out)
		}
	})
	return filepath.Join(binDir, "crashplugin")
}

// releases is a publisher for tests: signed manifests into etcd, binaries
// served like vigil-server's artifact store.
type releases struct {
	t         *testing.T
	cli       *clientv3.Client
	mu        sync.Mutex
	artifacts map[string][]byte
	tampered  map[string]bool
	srv       *httptest.Server
}

type signingKey struct {
	pub minisign.PublicKey
	sec minisign.PrivateKey
}

func newSigningKey(t *testing.T) signingKey {
	t.Helper()
	pub, sec, err := signing.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return signingKey{pub, sec}
}

func newReleases(t *testing.T, cli *clientv3.Client) (*releases, string) {
	r := &releases{t: t, cli: cli, artifacts: map[string][]byte{}, tampered: map[string]bool{}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		sha := strings.TrimPrefix(req.URL.Path, "/v1/artifacts/")
		r.mu.Lock()
		body, ok := r.artifacts[sha]
		bad := r.tampered[sha]
		r.mu.Unlock()
		if !ok {
			http.NotFound(w, req)
			return
		}
		if bad {
			body = bytes.Clone(body)
			body[len(body)-1] ^= 1
		}
		http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(body))
	}))
	t.Cleanup(r.srv.Close)
	return r, r.srv.URL
}

func releaseBody(t *testing.T, path, version string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return append(b, []byte("\nvigil-test-release "+version+"\n")...)
}

// publish signs body with secs as the release of this host's platform and
// writes the manifest to etcd.
func (r *releases) publish(plugin, version string, body []byte, tamper bool, secs ...signingKey) {
	r.t.Helper()
	r.publishFor(plugin, version, runtime.GOOS, runtime.GOARCH, body, tamper, secs...)
}

// otherArch is a platform's arch that is not this host's.
func otherArch() string {
	if runtime.GOARCH == "arm64" {
		return "amd64"
	}
	return "arm64"
}

// publishFor is publish for the platform goos/arch, at its key
// /hids/releases/{plugin}/{version}/{os}/{arch}.
func (r *releases) publishFor(plugin, version, goos, arch string, body []byte, tamper bool, secs ...signingKey) {
	r.t.Helper()
	sum := sha256.Sum256(body)
	m := signing.Manifest{Plugin: plugin, Version: version, OS: goos, Arch: arch, Length: int64(len(body)),
		SHA256: hex.EncodeToString(sum[:]), Expires: time.Now().Add(time.Hour), MinHostVersion: "1.0.0"}
	s := signing.SignedManifest{Manifest: m}
	for _, k := range secs {
		if err := s.Sign(k.sec); err != nil {
			r.t.Fatal(err)
		}
	}
	raw, err := s.Marshal()
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.artifacts[m.SHA256] = body
	r.tampered[m.SHA256] = tamper
	r.mu.Unlock()
	if _, err := r.cli.Put(context.Background(), api.NewKeyspace("").Release(plugin, version, goos, arch), string(raw)); err != nil {
		r.t.Fatal(err)
	}
}

// TestFleetInstallsSignedRelease drives a real host through etcd: a
// desired version installs and is acknowledged in the registration; a
// release short of the threshold and a tampered download are refused with
// the reason in the registration and the log while the installed version
// keeps running; a release that crashes rolls back; a restarted host runs
// the installed version.
func TestFleetInstallsSignedRelease(t *testing.T) {
	etcd := etcdtest.StartEmbedded(t)
	cli := etcd.Client(t)
	rel, url := newReleases(t, cli)
	k1, k2 := newSigningKey(t), newSigningKey(t)
	dir := t.TempDir()
	trustFile := filepath.Join(dir, "trust.json")
	tf, _ := json.Marshal(signing.TrustFile{Threshold: 2, Keys: []string{k1.pub.String(), k2.pub.String()}})
	if err := os.WriteFile(trustFile, tf, 0o600); err != nil {
		t.Fatal(err)
	}

	const name = "tp-upd"
	cfg := hostConfig(t, testplugin(name, nil))
	cc := control.Default()
	cc.Endpoints = etcd.Endpoints()
	cc.LeaseTTL = 5 * time.Second
	cc.StatusInterval = 200 * time.Millisecond
	cfg.Control = &cc
	cfg.Server = &config.Server{URL: url}
	cfg.Update = &config.Update{TrustFile: trustFile, HealthWindow: time.Second, StallTimeout: 2 * time.Second, Attempts: 2}
	a := start(t, cfg)
	host := cfg.HostName
	waitFor(t, "plugin running", func() bool { return pluginStatus(a, name).State == supervisor.StateRunning })

	updateOf := func() api.UpdateStatus {
		if u := registration(t, cli, host).Plugins[name].Update; u != nil {
			return *u
		}
		return api.UpdateStatus{}
	}
	want := func(version string) {
		putScope(t, cli, api.Scope{Kind: api.ScopeHost, Host: host}, api.DesiredState{
			Plugins: map[string]api.PluginState{name: {Version: version}},
		})
	}
	waitUpdate := func(version, state string) api.UpdateStatus {
		t.Helper()
		var u api.UpdateStatus
		waitFor(t, version+" "+state+" in the registration", func() bool {
			u = updateOf()
			return u.Target == version && u.State == state
		})
		return u
	}

	// A version published for another platform only: failed (retried),
	// and the registration names the key and the platforms there are.
	rel.publishFor(name, "1.0.5", runtime.GOOS, otherArch(), releaseBody(t, filepath.Join(binDir, "vigil-testplugin"), "1.0.5"), false, k1, k2)
	want("1.0.5")
	u := waitUpdate("1.0.5", api.UpdateFailed)
	own, other := runtime.GOOS+"/"+runtime.GOARCH, runtime.GOOS+"/"+otherArch()
	if wantErr := "no release of " + name + " 1.0.5 for " + own + " at /hids/releases/" + name + "/1.0.5/" + own + " (published for: " + other + ")"; !strings.Contains(u.Error, wantErr) {
		t.Errorf("missing platform reported as %+v, want %q", u, wantErr)
	}

	// Install: of a version published for two platforms, the host takes
	// its own platform's manifest (the other's binary differs).
	rel.publishFor(name, "1.1.0", runtime.GOOS, otherArch(), []byte("not this host's binary"), false, k1, k2)
	rel.publish(name, "1.1.0", releaseBody(t, filepath.Join(binDir, "vigil-testplugin"), "1.1.0"), false, k1, k2)
	want("1.1.0")
	waitUpdate("1.1.0", api.UpdateInstalled)
	installed := update.BinaryPath(cfg.UpdateSettings().Dir, name, "1.1.0")
	waitFor(t, "1.1.0 running", func() bool {
		st := pluginStatus(a, name)
		return st.Path == installed && st.State == supervisor.StateRunning
	})
	pid := pluginStatus(a, name).PID

	// Refusals: the installed version keeps running.
	rel.publish(name, "1.2.0", releaseBody(t, filepath.Join(binDir, "vigil-testplugin"), "1.2.0"), false, k1)
	want("1.2.0")
	u = waitUpdate("1.2.0", api.UpdateRefused)
	if !strings.Contains(u.Error, "too few distinct trusted keys") || u.Running != "1.1.0" {
		t.Errorf("threshold refusal reported as %+v", u)
	}
	rel.publish(name, "1.3.0", releaseBody(t, filepath.Join(binDir, "vigil-testplugin"), "1.3.0"), true, k1, k2)
	want("1.3.0")
	u = waitUpdate("1.3.0", api.UpdateFailed)
	if !strings.Contains(u.Error, "sha256 mismatch") {
		t.Errorf("tampered binary reported as %+v", u)
	}
	if st := pluginStatus(a, name); st.PID != pid || st.Path != installed {
		t.Fatalf("a refused release disturbed the running one: %+v", st)
	}
	logText, _ := os.ReadFile(cfg.Log.File)
	if !strings.Contains(string(logText), "too few distinct trusted keys") || !strings.Contains(string(logText), "sha256 mismatch") {
		t.Error("refusals missing from the host log")
	}

	// A crashing release rolls back to 1.1.0.
	rel.publish(name, "1.4.0", releaseBody(t, crashPlugin(t), "1.4.0"), false, k1, k2)
	want("1.4.0")
	u = waitUpdate("1.4.0", api.UpdateRolledBack)
	if !strings.Contains(u.Error, "health gate") || u.Running != "1.1.0" {
		t.Errorf("rollback reported as %+v", u)
	}
	waitFor(t, "1.1.0 running again", func() bool {
		st := pluginStatus(a, name)
		return st.Path == installed && st.State == supervisor.StateRunning
	})

	// A restarted host runs the installed version from the start.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := start(t, cfg)
	waitFor(t, "installed version running after restart", func() bool {
		st := pluginStatus(b, name)
		return st.Path == installed && st.State == supervisor.StateRunning
	})
}
