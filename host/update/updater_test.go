package update

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/spawn"
	"github.com/vigil-hids/vigil/host/supervisor"
	"github.com/vigil-hids/vigil/internal/syncbuf"
	"github.com/vigil-hids/vigil/sdk/pluginpb"
	"github.com/vigil-hids/vigil/signing"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vigil-update-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", dir+"/", "../../plugins/testplugin/cmd/vigil-testplugin", "./testdata/crashplugin")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building test binaries: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// release returns a plugin binary that differs from the others by a
// trailer (an ELF binary runs with bytes appended), so each version has
// its own sha256.
func release(t testing.TB, bin, version string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(binDir, bin))
	if err != nil {
		t.Fatal(err)
	}
	return append(b, []byte("\nvigil-test-release "+version+"\n")...)
}

type nopSink struct{}

func (nopSink) Submit(*pluginpb.EventBatch) {}
func (nopSink) Restarted()                  {}
func (nopSink) SetVersion(string)           {}

// supPlugins drives a real supervisor the way the agent does: the
// config file's binary unless the updater names another.
type supPlugins struct {
	m    *supervisor.Manager
	base supervisor.Spec
	u    *Updater
	mu   sync.Mutex
}

func (p *supPlugins) spec() supervisor.Spec {
	s := p.base
	if p.u != nil {
		if b := p.u.Binary(s.Name); b != nil {
			s.Path, s.SHA256 = b.Path, b.SHA256
		}
	}
	return s
}

func (p *supPlugins) Refresh(string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.m.Set([]supervisor.Spec{p.spec()}); err != nil {
		panic(err)
	}
}

func (p *supPlugins) Observe(name string, fn func(supervisor.Lifecycle)) func() {
	return p.m.Observe(name, fn)
}

func (p *supPlugins) State(name string) (supervisor.State, string) {
	pl := p.m.Plugin(name)
	if pl == nil {
		return supervisor.StateStopped, ""
	}
	st := pl.Status()
	return st.State, st.Version
}

func (p *supPlugins) status(t testing.TB) supervisor.Status {
	t.Helper()
	return p.m.Plugin(p.base.Name).Status()
}

// slowSource gives a loaded machine time to serve a plugin binary.
func slowSource(url string) Source {
	return Source{BaseURL: url, RequestTimeout: 30 * time.Second, StallTimeout: 2 * time.Second, Attempts: 2, RetryDelay: 10 * time.Millisecond}
}

// world is a release server, an etcd stand-in for manifests, two release
// keys (threshold 2) and a supervised plugin.
type world struct {
	t         testing.TB
	k1, k2    testKey
	trust     Trust
	mu        sync.Mutex
	manifests map[string][]byte
	artifacts map[string][]byte
	srv       *httptest.Server
	plugins   *supPlugins
	stateDir  string
	dir       string
	log       syncbuf.Buffer // the updater's log, written from its goroutines
	// store, keyring and keyringRefresh, if set, replace the pinned
	// release keys with a keyring trust (keyring_test.go).
	store          *TrustStore
	keyring        func(context.Context) ([]byte, error)
	keyringRefresh time.Duration
	// onLog, if set, sees each log line in the updater's goroutine as it
	// is written (to act at a given step).
	onLog func(line string)
}

const tp = "tp-up"

func newWorld(t testing.TB) *world {
	w := &world{t: t, k1: newTestKey(t), k2: newTestKey(t), manifests: map[string][]byte{}, artifacts: map[string][]byte{}}
	w.trust = testTrust(t, 2, w.k1, w.k2)
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		body, ok := w.artifacts[strings.TrimPrefix(r.URL.Path, "/v1/artifacts/")]
		w.mu.Unlock()
		if !ok {
			http.NotFound(rw, r)
			return
		}
		http.ServeContent(rw, r, "", time.Time{}, bytes.NewReader(body))
	}))
	t.Cleanup(w.srv.Close)
	root := t.TempDir()
	w.stateDir, w.dir = filepath.Join(root, "state"), filepath.Join(root, "state", "plugins")

	sp := spawn.New()
	t.Cleanup(sp.Close)
	m, err := supervisor.New(supervisor.Config{
		Options: supervisor.Options{HostName: "update-test", HostVersion: "1.2.0", BackoffInitial: 20 * time.Millisecond,
			BackoffMax: 200 * time.Millisecond, ShutdownTimeout: time.Second, YoungAge: 5 * time.Second, QuarantineAfter: 50},
		Spawner: sp,
		Events:  func(string) supervisor.EventSink { return nopSink{} },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	w.plugins = &supPlugins{m: m, base: supervisor.Spec{Name: tp, Path: filepath.Join(binDir, "vigil-testplugin"), Enabled: true}}
	return w
}

func (w *world) Write(p []byte) (int, error) {
	if w.onLog != nil {
		w.onLog(string(p))
	}
	return w.log.Write(p)
}

func (w *world) logText() string { return w.log.String() }

func (w *world) updater(t testing.TB) *Updater {
	store := w.store
	if store == nil {
		store = NewTrustStore(w.trust, "", nil)
	}
	u, err := New(Config{
		Keyring: w.keyring, KeyringRefresh: w.keyringRefresh,
		Host: "update-test", HostVersion: "1.2.0", OS: "linux", Arch: "amd64",
		Trust: store, Source: slowSource(w.srv.URL), Dir: w.dir, StateDir: w.stateDir,
		HealthWindow: time.Second, StartTimeout: 30 * time.Second, Keep: 1, RetryDelay: time.Hour,
		Manifests: func(_ context.Context, plugin, version string) ([]byte, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			b, ok := w.manifests[plugin+"/"+version]
			if !ok {
				return nil, errors.New("no such release")
			}
			return b, nil
		},
		Plugins: w.plugins,
		Log:     slog.New(slog.NewTextHandler(w, nil)),
		Now:     func() time.Time { return testNow },
	})
	if err != nil {
		t.Fatal(err)
	}
	w.plugins.u = u
	t.Cleanup(u.Close)
	return u
}

// publish signs body as plugin version with the given keys (both by
// default), serves it, and stores the manifest under key version.
func (w *world) publish(version string, body []byte, mod func(*signing.Manifest), keys ...testKey) signing.Manifest {
	m := manifestFor(tp, version, body)
	if mod != nil {
		mod(&m)
	}
	if len(keys) == 0 {
		keys = []testKey{w.k1, w.k2}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.artifacts[m.SHA256] = body
	w.manifests[tp+"/"+version] = signManifest(w.t, m, keys...)
	return m
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitState(t testing.TB, u *Updater, target, state string) api.UpdateStatus {
	t.Helper()
	var last api.UpdateStatus
	waitFor(t, target+" "+state, func() bool {
		if s := u.Status(tp); s != nil {
			last = *s
			return s.Target == target && s.State == state
		}
		return false
	})
	return last
}

// TestInstallRollbackAndRestart: a good release installs and runs from
// its versioned directory; a release that crashes after the handshake
// rolls back to it automatically; a new updater on the same state dir
// runs the installed version, not the config file's binary.
func TestInstallRollbackAndRestart(t *testing.T) {
	w := newWorld(t)
	u := w.updater(t)
	w.plugins.Refresh(tp)
	waitFor(t, "plugin running", func() bool { return w.plugins.status(t).State == supervisor.StateRunning })

	good := w.publish("1.1.0", release(t, "vigil-testplugin", "1.1.0"), nil)
	u.Want(tp, "1.1.0")
	st := waitState(t, u, "1.1.0", api.UpdateInstalled)
	path := BinaryPath(w.dir, tp, "1.1.0")
	if s := w.plugins.status(t); s.Path != path || s.State != supervisor.StateRunning {
		t.Fatalf("after install: %+v", s)
	}
	if st.Running != "1.1.0" || st.Error != "" {
		t.Errorf("status %+v", st)
	}
	if u.Status(tp) != u.Status(tp) {
		t.Error("an unchanged status must be the same pointer (the control loop compares registrations with ==)")
	}
	for _, p := range []string{path, filepath.Dir(path)} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v %v, want mode 0755", p, fi.Mode(), err)
		}
	}
	if b := u.Binary(tp); b == nil || b.SHA256 != good.SHA256 {
		t.Errorf("Binary = %+v", b)
	}

	// A crashing release: handshake passes, it dies within the window,
	// and 1.1.0 comes back.
	w.publish("1.2.0", release(t, "crashplugin", "1.2.0"), nil)
	u.Want(tp, "1.2.0")
	st = waitState(t, u, "1.2.0", api.UpdateRolledBack)
	if !strings.Contains(st.Error, "health gate") || !strings.Contains(st.Error, "crashed") || !strings.Contains(st.Error, "version 1.1.0 running again") {
		t.Errorf("rollback reason %q", st.Error)
	}
	waitFor(t, "1.1.0 running again", func() bool {
		s := w.plugins.status(t)
		return s.Path == path && s.State == supervisor.StateRunning
	})
	if _, err := os.Stat(filepath.Join(w.dir, tp, "1.2.0")); !os.IsNotExist(err) {
		t.Errorf("the failed release stays on disk: %v", err)
	}
	t.Logf("rolled back: %s (took %s)", st.Error, u.LastRollback(tp))
	if !strings.Contains(w.logText(), "plugin update rolled-back") {
		t.Error("rollback not logged")
	}
	// The same failed version is not tried again while it is the target.
	u.Want(tp, "1.2.0")
	time.Sleep(200 * time.Millisecond)
	if s := u.Status(tp); s.State != api.UpdateRolledBack {
		t.Errorf("failed version retried: %+v", s)
	}

	// A third good version; keep=1 collects nothing but the running and
	// one previous version.
	w.publish("1.3.0", release(t, "vigil-testplugin", "1.3.0"), nil)
	u.Want(tp, "1.3.0")
	waitState(t, u, "1.3.0", api.UpdateInstalled)
	w.publish("1.4.0", release(t, "vigil-testplugin", "1.4.0"), nil)
	u.Want(tp, "1.4.0")
	waitState(t, u, "1.4.0", api.UpdateInstalled)
	ents, _ := os.ReadDir(filepath.Join(w.dir, tp))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "1.3.0,1.4.0" {
		t.Errorf("installed versions on disk %v, want the running 1.4.0 and the previous 1.3.0", names)
	}

	// Restart: the installed version runs.
	u.Close()
	u2 := w.updater(t)
	if b := u2.Binary(tp); b == nil || b.Version != "1.4.0" || b.Path != BinaryPath(w.dir, tp, "1.4.0") {
		t.Fatalf("after restart Binary = %+v", b)
	}
	var saved state
	raw, _ := os.ReadFile(filepath.Join(w.stateDir, stateFile))
	if err := json.Unmarshal(raw, &saved); err != nil || saved.Plugins[tp].Highest != "1.4.0" {
		t.Errorf("state file %s (%v)", raw, err)
	}
}

// TestRefusals: each bad release is refused (or fails) with its reason in
// the status and the log, and the running version keeps running.
func TestRefusals(t *testing.T) {
	w := newWorld(t)
	u := w.updater(t)
	w.plugins.Refresh(tp)
	waitFor(t, "plugin running", func() bool { return w.plugins.status(t).State == supervisor.StateRunning })
	w.publish("1.1.0", release(t, "vigil-testplugin", "1.1.0"), nil)
	u.Want(tp, "1.1.0")
	waitState(t, u, "1.1.0", api.UpdateInstalled)
	// A signed rollback to 1.0.1 leaves the highest installed at 1.1.0.
	w.publish("1.0.1", release(t, "vigil-testplugin", "1.0.1"), func(m *signing.Manifest) { m.Rollback = true })
	u.Want(tp, "1.0.1")
	waitState(t, u, "1.0.1", api.UpdateInstalled)
	running := w.plugins.status(t)

	stranger := newTestKey(t)
	rel160, rel161, rel162 := release(t, "vigil-testplugin", "1.6.0"), release(t, "vigil-testplugin", "1.6.1"), release(t, "vigil-testplugin", "1.6.2")
	serve := func(h http.HandlerFunc) string {
		s := httptest.NewServer(h)
		t.Cleanup(s.Close)
		return s.URL
	}
	cases := []struct {
		name, version string
		body          []byte
		mod           func(*signing.Manifest)
		keys          []testKey
		raw           func(good []byte) []byte // replaces the stored manifest
		server        http.HandlerFunc         // replaces the artifact server
		state         string
		want          error
		text          string
	}{
		{name: "unknown key", version: "1.5.0", keys: []testKey{stranger, w.k1}, state: api.UpdateRefused, want: signing.ErrThreshold, text: "untrusted keys"},
		{name: "bad signature", version: "1.5.1", raw: func(good []byte) []byte {
			s, _ := signing.ParseManifest(bytes.NewReader(good))
			s.Manifest.Length++
			b, _ := s.Marshal()
			return b
		}, state: api.UpdateRefused, want: signing.ErrBadSignature},
		{name: "fewer than threshold", version: "1.5.2", keys: []testKey{w.k1}, state: api.UpdateRefused, want: signing.ErrThreshold},
		{name: "same key twice", version: "1.5.3", raw: func(good []byte) []byte {
			s, _ := signing.ParseManifest(bytes.NewReader(good))
			s.Signatures = []signing.Signature{s.Signatures[0], s.Signatures[0]}
			b, _ := s.Marshal()
			return b
		}, state: api.UpdateRefused, want: signing.ErrThreshold},
		{name: "expired", version: "1.5.4", mod: func(m *signing.Manifest) { m.Expires = testNow.Add(-time.Hour) }, state: api.UpdateRefused, want: signing.ErrExpired},
		{name: "downgrade", version: "1.0.0", state: api.UpdateRefused, want: signing.ErrDowngrade},
		{name: "other plugin", version: "1.5.5", mod: func(m *signing.Manifest) { m.Plugin = "netmon" }, state: api.UpdateRefused, want: signing.ErrWrongPlugin},
		{name: "other platform", version: "1.5.6", mod: func(m *signing.Manifest) { m.OS = "freebsd" }, state: api.UpdateRefused, want: signing.ErrWrongPlatform},
		{name: "manifest under another version's key", version: "1.5.7", mod: func(m *signing.Manifest) { m.Version = "1.5.8" }, state: api.UpdateRefused, want: ErrKeyMismatch},
		{name: "replayed old manifest", version: "1.0.5", state: api.UpdateRefused, want: ErrReplay},
		{name: "tampered binary", version: "1.6.0", server: func(rw http.ResponseWriter, r *http.Request) {
			b := bytes.Clone(rel160)
			b[len(b)-2] ^= 1
			rw.Write(b)
		}, state: api.UpdateFailed, want: signing.ErrHashMismatch},
		{name: "truncated", version: "1.6.1", server: func(rw http.ResponseWriter, r *http.Request) {
			b := bytes.Clone(rel161)
			rw.Write(b[:len(b)/2])
		}, state: api.UpdateFailed, want: signing.ErrLengthMismatch, text: "truncated"},
		{name: "oversized", version: "1.6.2", server: func(rw http.ResponseWriter, r *http.Request) {
			rw.Write(append(bytes.Clone(rel162), "more"...))
		}, state: api.UpdateFailed, want: signing.ErrLengthMismatch, text: "longer"},
		{name: "garbage", version: "1.6.3", server: func(rw http.ResponseWriter, r *http.Request) {
			rw.Write([]byte("<html>503 gateway</html>"))
		}, state: api.UpdateFailed, want: signing.ErrLengthMismatch},
		{name: "hangs", version: "1.6.4", server: func(rw http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		}, state: api.UpdateFailed, want: ErrDownload, text: "no data for"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := release(t, "vigil-testplugin", tc.version)
			w.publish(tc.version, body, tc.mod, tc.keys...)
			if tc.raw != nil {
				w.mu.Lock()
				w.manifests[tp+"/"+tc.version] = tc.raw(w.manifests[tp+"/"+tc.version])
				w.mu.Unlock()
			}
			src := w.srv.URL
			if tc.server != nil {
				src = serve(tc.server)
			}
			u.cfg.Source = slowSource(src)
			u.Want(tp, tc.version)
			st := waitState(t, u, tc.version, tc.state)
			if !strings.Contains(st.Error, tc.want.Error()) || !strings.Contains(st.Error, tc.text) {
				t.Errorf("status error %q, want %q and %q", st.Error, tc.want, tc.text)
			}
			if !strings.Contains(w.logText(), tc.version) {
				t.Errorf("refusal of %s not logged", tc.version)
			}
			s := w.plugins.status(t)
			if s.PID != running.PID || s.Path != running.Path || s.State != supervisor.StateRunning || st.Running != "1.0.1" {
				t.Errorf("the running version was disturbed: %+v (status %+v)", s, st)
			}
			t.Logf("%s: %s", tc.state, st.Error)
		})
	}

	// A failed download is retried with backoff (an hour here); the same
	// target asked again by a desired-state change does not bypass it.
	before := u.Status(tp)
	u.Want(tp, "1.6.4")
	time.Sleep(300 * time.Millisecond)
	if after := u.Status(tp); after != before {
		t.Errorf("the same target retried at once: %+v", after)
	}
}
