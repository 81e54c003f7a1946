package main

// End-to-end self-update: real vigil-host binaries built at different
// versions, a real etcd, the desired HostVersion written the way the
// server writes it, and the binary swapped, restarted (exec), health-gated
// and rolled back for real.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"aead.dev/minisign"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/signing"
)

const versionVar = "github.com/vigil-hids/vigil/internal/version.Version"

// build compiles pkg into dir/name with ldflags.
func build(t *testing.T, dir, name, pkg, ldflags string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ldflags, "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", name, err, b)
	}
	return out
}

// release signs bin as vigil-host version with sec, stores the binary in
// the artifact map and the manifest in etcd at the release key.
func release(t *testing.T, cli *clientv3.Client, arts *artifacts, sec minisign.PrivateKey, bin, version string) {
	t.Helper()
	releaseFor(t, cli, arts, sec, bin, version, runtime.GOOS, runtime.GOARCH)
}

// releaseFor is release for the platform goos/arch (its own key).
func releaseFor(t *testing.T, cli *clientv3.Client, arts *artifacts, sec minisign.PrivateKey, bin, version, goos, arch string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bundle")
	m := signing.Manifest{Plugin: api.HostReleaseName, Version: version, OS: goos, Arch: arch,
		Expires: time.Now().Add(24 * time.Hour), MinHostVersion: "1.0.0"}
	s, err := signing.CreateBundle(dir, bin, m)
	if err != nil {
		t.Fatal(err)
	}
	if s, err = signing.SignBundle(dir, sec); err != nil {
		t.Fatal(err)
	}
	body, err := os.ReadFile(filepath.Join(dir, signing.BundleBinary))
	if err != nil {
		t.Fatal(err)
	}
	arts.put(s.Manifest.SHA256, body)
	raw, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(context.Background(), api.NewKeyspace("").Release(api.HostReleaseName, version, s.Manifest.OS, s.Manifest.Arch), string(raw)); err != nil {
		t.Fatal(err)
	}
}

// artifacts stands in for vigil-server's artifact store (GET
// /v1/artifacts/{sha256}); the server's own store is tested in server/.
type artifacts struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (a *artifacts) put(sum string, b []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.m[sum] = b
}

func (a *artifacts) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	b, ok := a.m[strings.TrimPrefix(r.URL.Path, "/v1/artifacts/")]
	a.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	http.ServeContent(w, r, "artifact", time.Time{}, bytes.NewReader(b))
}

// service runs vigil-host like systemd with Restart=on-failure: a
// non-zero exit starts the binary at its path again.
type service struct {
	t    *testing.T
	argv []string
	log  *os.File

	mu       sync.Mutex
	cmd      *exec.Cmd
	stopping bool
	starts   int
	exits    []int
	done     chan struct{}
}

func startService(t *testing.T, logPath string, argv ...string) *service {
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	s := &service{t: t, argv: argv, log: f, done: make(chan struct{})}
	go s.loop()
	t.Cleanup(s.stop)
	return s
}

func (s *service) loop() {
	defer close(s.done)
	for {
		s.mu.Lock()
		if s.stopping {
			s.mu.Unlock()
			return
		}
		cmd := exec.Command(s.argv[0], s.argv[1:]...)
		cmd.Stdout, cmd.Stderr = s.log, s.log
		if err := cmd.Start(); err != nil {
			s.mu.Unlock()
			fmt.Fprintf(s.log, "test service: start: %v\n", err)
			return
		}
		s.cmd = cmd
		s.starts++
		s.mu.Unlock()
		err := cmd.Wait()
		fmt.Fprintf(s.log, "test service: vigil-host exited: %v\n", err)
		var ee *exec.ExitError
		if err == nil || !errors.As(err, &ee) {
			return
		}
		s.mu.Lock()
		s.exits = append(s.exits, ee.ExitCode())
		s.mu.Unlock()
		time.Sleep(100 * time.Millisecond) // RestartSec
	}
}

func (s *service) stop() {
	s.mu.Lock()
	s.stopping = true
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
	}
	s.mu.Unlock()
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.mu.Lock()
		_ = s.cmd.Process.Kill()
		s.mu.Unlock()
		<-s.done
	}
	s.log.Close()
}

func waitReg(t *testing.T, cli *clientv3.Client, host, what string, logPath string, ok func(api.Registration) bool) api.Registration {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	var r api.Registration
	for time.Now().Before(deadline) {
		resp, err := cli.Get(context.Background(), api.NewKeyspace("").Agent(host))
		if err == nil && len(resp.Kvs) == 1 {
			r = api.Registration{}
			if json.Unmarshal(resp.Kvs[0].Value, &r) == nil && ok(r) {
				return r
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(logPath)
	out, _ := json.Marshal(r)
	t.Fatalf("timed out waiting for %s; registration %s\nhost output:\n%s", what, out, b)
	return r
}

func putHostVersion(t *testing.T, cli *clientv3.Client, host, version string) {
	t.Helper()
	sc := api.Scope{Kind: api.ScopeHost, Host: host}
	doc := api.Document{Scope: sc.String(), Author: "test", Time: time.Now(), State: api.DesiredState{HostVersion: version}}
	b, _ := json.Marshal(doc)
	if _, err := cli.Put(context.Background(), api.NewKeyspace("").ScopeKey(sc), string(b)); err != nil {
		t.Fatal(err)
	}
}

func binaryVersion(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func TestSelfUpdateFromFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this test builds four vigil-host binaries and runs them for 1-2 minutes; make test runs it")
	}
	work := t.TempDir()
	builds := filepath.Join(work, "builds")
	v100 := build(t, builds, "vigil-host-1.0.0", ".", "-X "+versionVar+"=1.0.0")
	v110 := build(t, builds, "vigil-host-1.1.0", ".", "-X "+versionVar+"=1.1.0")
	v120 := build(t, builds, "vigil-host-1.2.0-crash", ".", "-X "+versionVar+"=1.2.0 -X main.faultInjection=crash-at-start")
	v140 := build(t, builds, "vigil-host-1.4.0-unhealthy", ".", "-X "+versionVar+"=1.4.0 -X main.faultInjection=unhealthy")
	example := build(t, builds, "vigil-example", "../../plugins/example/cmd/vigil-example", "")

	pub, sec, err := signing.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	_, stranger, err := signing.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	trust := filepath.Join(work, "trust.json")
	tb, _ := json.Marshal(signing.TrustFile{Threshold: 1, Keys: []string{pub.String()}})
	if err := os.WriteFile(trust, tb, 0o644); err != nil {
		t.Fatal(err)
	}

	etcd := etcdtest.StartEmbedded(t)
	cli := etcd.Client(t)
	arts := &artifacts{m: map[string][]byte{}}
	srv := httptest.NewServer(arts)
	t.Cleanup(srv.Close)
	release(t, cli, arts, sec, v110, "1.1.0")
	release(t, cli, arts, sec, v120, "1.2.0")
	release(t, cli, arts, stranger, v110, "1.3.0")
	release(t, cli, arts, sec, v140, "1.4.0")
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	releaseFor(t, cli, arts, sec, v110, "1.5.0", runtime.GOOS, other)

	// The health window bounds every trial; 1.1.0 passes well within it.
	const window = 15 * time.Second
	trustSection := "{trust_file: " + trust + "}"
	newHost := func(t *testing.T, host, restart, updateSection string) (bin, out string, svc *service) {
		dir := t.TempDir()
		bin = filepath.Join(dir, "bin", "vigil-host")
		if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(v100)
		if err := os.WriteFile(bin, b, 0o755); err != nil {
			t.Fatal(err)
		}
		cfg := fmt.Sprintf(`host_name: %s
state_dir: %s/state
run_dir: %s/run
log: {level: debug, file: %s/host.log, stderr: false}
sinks:
  file: {path: %s/events.ndjson}
governance: {cgroups: false}
supervisor: {backoff_initial: 50ms, backoff_max: 500ms}
control:
  endpoints: [%s]
  lease_ttl: 5s
  status_interval: 200ms
server: {url: %s}
update: %s
plugins:
  - {name: example, path: %s, config: {interval: 1s}}
`, host, dir, dir, dir, dir, etcd.Endpoints()[0], srv.URL, updateSection, example)
		cfgPath := filepath.Join(dir, "host.yaml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		out = filepath.Join(dir, "stdout.log")
		svc = startService(t, out, bin, "run", "--config", cfgPath, "--restart", restart,
			"--selfupdate-settle", "1s", "--selfupdate-window", window.String())
		return bin, out, svc
	}
	running := func(r api.Registration) bool { return r.Plugins["example"].State == "running" }

	// Under systemd: vigil-host exits 75 and the service manager starts the
	// new binary (RestartForceExitStatus=75 in the unit).
	t.Run("exit 75", func(t *testing.T) {
		const host = "su-exit"
		bin, out, svc := newHost(t, host, "exit", trustSection)
		r := waitReg(t, cli, host, "1.0.0 registered with its plugin running", out, func(r api.Registration) bool {
			return r.Version == "1.0.0" && running(r)
		})
		pid := r.Instance.PID
		putHostVersion(t, cli, host, "1.1.0")
		r = waitReg(t, cli, host, "1.1.0 installed", out, func(r api.Registration) bool {
			return r.Version == "1.1.0" && r.HostUpdate != nil && r.HostUpdate.State == api.UpdateInstalled && running(r)
		})
		svc.mu.Lock()
		starts, exits := svc.starts, append([]int(nil), svc.exits...)
		svc.mu.Unlock()
		if r.Instance.PID == pid || starts != 2 || len(exits) != 1 || exits[0] != 75 {
			t.Fatalf("restart through the service manager: pid %d -> %d, starts %d, exits %v", pid, r.Instance.PID, starts, exits)
		}
		if v := binaryVersion(t, bin); v != "1.1.0" {
			t.Fatalf("binary at the target path is %s", v)
		}
	})

	// A host that pins a root key, whose keyring file lists only the
	// stranger's key: 1.1.0 (signed by the release key) is refused, until
	// the keyring published in etcd lists the release key; the host takes
	// it on its periodic read and installs 1.1.0 without a new desired
	// version.
	t.Run("keyring rotation", func(t *testing.T) {
		const host = "su-keys"
		rootPub, rootSec, err := signing.GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		strangerPub := stranger.Public().(minisign.PublicKey)
		keyring := func(serial uint64, keys ...minisign.PublicKey) []byte {
			kr := signing.SignedKeyring{Keyring: signing.Keyring{Serial: serial, Expires: time.Now().Add(time.Hour), Threshold: 1}}
			for _, k := range keys {
				kr.Keyring.Keys = append(kr.Keyring.Keys, k.String())
			}
			if err := kr.Sign(rootSec); err != nil {
				t.Fatal(err)
			}
			b, err := kr.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		dir := t.TempDir()
		roots, krFile := filepath.Join(dir, "roots.json"), filepath.Join(dir, "keyring.json")
		rb, _ := json.Marshal(signing.TrustFile{Threshold: 1, Keys: []string{rootPub.String()}})
		if err := os.WriteFile(roots, rb, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(krFile, keyring(1, strangerPub), 0o644); err != nil {
			t.Fatal(err)
		}
		bin, out, _ := newHost(t, host, "exec", fmt.Sprintf("{roots_file: %s, keyring_file: %s, keyring_refresh: 1s}", roots, krFile))
		waitReg(t, cli, host, "1.0.0 registered with keyring serial 1", out, func(r api.Registration) bool {
			return r.Version == "1.0.0" && running(r) && r.Keyring != nil && r.Keyring.Serial == 1
		})
		putHostVersion(t, cli, host, "1.1.0")
		r := waitReg(t, cli, host, "1.1.0 refused", out, func(r api.Registration) bool {
			return r.HostUpdate != nil && r.HostUpdate.Target == "1.1.0" && r.HostUpdate.State == api.UpdateRefused
		})
		if !strings.Contains(r.HostUpdate.Error, "too few distinct trusted keys") {
			t.Fatalf("refusal: %+v", r.HostUpdate)
		}
		if _, err := cli.Put(context.Background(), api.NewKeyspace("").Keyring(), string(keyring(2, pub))); err != nil {
			t.Fatal(err)
		}
		waitReg(t, cli, host, "1.1.0 installed after the new keyring", out, func(r api.Registration) bool {
			return r.Version == "1.1.0" && r.HostUpdate != nil && r.HostUpdate.State == api.UpdateInstalled && running(r) &&
				r.Keyring != nil && r.Keyring.Serial == 2
		})
		if v := binaryVersion(t, bin); v != "1.1.0" {
			t.Fatalf("binary at the target path is %s", v)
		}
	})

	// Without a service manager's help for the upgrade: exec in place.
	const host = "su-exec"
	bin, out, svc := newHost(t, host, "exec", trustSection)

	r := waitReg(t, cli, host, "1.0.0 registered with its plugin running", out, func(r api.Registration) bool {
		return r.Version == "1.0.0" && running(r)
	})
	pid := r.Instance.PID

	// Upgrade: the desired HostVersion reaches the host, which installs
	// 1.1.0, execs into it, passes the health gate and reports.
	start := time.Now()
	putHostVersion(t, cli, host, "1.1.0")
	waitReg(t, cli, host, "1.1.0 running", out, func(r api.Registration) bool { return r.Version == "1.1.0" })
	t.Logf("figure: desired HostVersion written -> 1.1.0 running and registered: %s", time.Since(start).Round(time.Millisecond))
	r = waitReg(t, cli, host, "1.1.0 installed", out, func(r api.Registration) bool {
		return r.Version == "1.1.0" && r.HostUpdate != nil && r.HostUpdate.State == api.UpdateInstalled && running(r)
	})
	t.Logf("figure: desired HostVersion written -> 1.1.0 running, health gate passed (settle 1s): %s", time.Since(start).Round(time.Millisecond))
	if r.Instance.PID != pid {
		t.Fatalf("exec restart changed the pid: %d -> %d", pid, r.Instance.PID)
	}
	if v := binaryVersion(t, bin); v != "1.1.0" {
		t.Fatalf("binary at the target path is %s", v)
	}
	if v := binaryVersion(t, filepath.Join(filepath.Dir(bin), ".vigil-host.prev")); v != "1.0.0" {
		t.Fatalf("kept previous binary is %s", v)
	}

	// A release signed by an unknown key is refused; 1.1.0 keeps running.
	putHostVersion(t, cli, host, "1.3.0")
	r = waitReg(t, cli, host, "1.3.0 refused", out, func(r api.Registration) bool {
		return r.HostUpdate != nil && r.HostUpdate.Target == "1.3.0" && r.HostUpdate.State == api.UpdateRefused
	})
	if !strings.Contains(r.HostUpdate.Error, "too few distinct trusted keys") || r.Version != "1.1.0" || binaryVersion(t, bin) != "1.1.0" {
		t.Fatalf("refusal: %+v, version %s", r.HostUpdate, r.Version)
	}

	// A version published for another platform only: failed (retried),
	// naming the key read and the platform there is; 1.1.0 keeps running.
	putHostVersion(t, cli, host, "1.5.0")
	r = waitReg(t, cli, host, "1.5.0 failed", out, func(r api.Registration) bool {
		return r.HostUpdate != nil && r.HostUpdate.Target == "1.5.0" && r.HostUpdate.State == api.UpdateFailed
	})
	own := runtime.GOOS + "/" + runtime.GOARCH
	if want := "no release of vigil-host 1.5.0 for " + own + " at /hids/releases/vigil-host/1.5.0/" + own + " (published for: " + runtime.GOOS + "/" + other + ")"; !strings.Contains(r.HostUpdate.Error, want) || r.Version != "1.1.0" {
		t.Fatalf("missing platform: %+v, version %s; want %q", r.HostUpdate, r.Version, want)
	}

	// A build that crashes at start: the service manager starts it again,
	// its second start restores 1.1.0, which reports the rollback.
	start = time.Now()
	putHostVersion(t, cli, host, "1.2.0")
	r = waitReg(t, cli, host, "1.2.0 rolled back", out, func(r api.Registration) bool {
		return r.Version == "1.1.0" && r.HostUpdate != nil && r.HostUpdate.Target == "1.2.0" &&
			r.HostUpdate.State == api.UpdateRolledBack && running(r)
	})
	t.Logf("figure: desired HostVersion written -> crashing 1.2.0 rolled back, 1.1.0 running and registered: %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(r.HostUpdate.Error, "crashed before it became healthy") {
		t.Fatalf("rollback reason: %q", r.HostUpdate.Error)
	}
	if v := binaryVersion(t, bin); v != "1.1.0" {
		t.Fatalf("binary after rollback is %s", v)
	}

	// A build that runs but never becomes healthy: at the end of its
	// window it restores 1.1.0 itself and execs into it.
	start = time.Now()
	putHostVersion(t, cli, host, "1.4.0")
	waitReg(t, cli, host, "1.4.0 on trial", out, func(r api.Registration) bool { return r.Version == "1.4.0" })
	trialAt := time.Now()
	r = waitReg(t, cli, host, "1.4.0 rolled back", out, func(r api.Registration) bool {
		return r.Version == "1.1.0" && r.HostUpdate != nil && r.HostUpdate.Target == "1.4.0" &&
			r.HostUpdate.State == api.UpdateRolledBack && running(r)
	})
	t.Logf("figure: unhealthy 1.4.0 registered -> rolled back, 1.1.0 registered: %s (window %s); from the desired write: %s",
		time.Since(trialAt).Round(time.Millisecond), window, time.Since(start).Round(time.Millisecond))
	if !strings.Contains(r.HostUpdate.Error, "not healthy within its window") || !strings.Contains(r.HostUpdate.Error, "fault injection") {
		t.Fatalf("rollback reason: %q", r.HostUpdate.Error)
	}
	if v := binaryVersion(t, bin); v != "1.1.0" {
		t.Fatalf("binary after rollback is %s", v)
	}

	svc.mu.Lock()
	starts := svc.starts
	svc.mu.Unlock()
	if starts != 2 { // 1.0.0 (exec 1.1.0, exec 1.2.0: crash), 1.2.0 again (rollback, exec 1.1.0)
		t.Errorf("service started vigil-host %d times, want 2", starts)
	}
}
