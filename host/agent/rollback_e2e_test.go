package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/cmd/vigilctl/cli"
	"github.com/vigil-hids/vigil/host/config"
	"github.com/vigil-hids/vigil/host/control"
	"github.com/vigil-hids/vigil/host/supervisor"
	"github.com/vigil-hids/vigil/host/update"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server"
	"github.com/vigil-hids/vigil/server/pki"
	"github.com/vigil-hids/vigil/signing"
)

// TestRolloutUndoWithSignedRollback drives the whole rollback path with
// real parts: embedded etcd, a real vigil-server (mutual TLS, artifact
// store, API), vigilctl's own code, and a real host running real plugin
// processes. 1.0.0 then 1.1.0 are rolled out and installed; undo is
// refused with the commands that make a rollback release until
// 1.0.0+rollback.1 (1.0.0's binary, signed with rollback) is published;
// then undo writes it and the host runs 1.0.0's binary again and reports
// it.
func TestRolloutUndoWithSignedRollback(t *testing.T) {
	etcd := etcdtest.StartEmbedded(t)
	etcdCli := etcd.Client(t)
	dir := t.TempDir()
	pd := filepath.Join(dir, "pki")
	if _, err := pki.Init(pd, pki.Options{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := server.Start(ctx, server.Config{
		ID: "rollback-e2e", Listen: "127.0.0.1:0", DataDir: filepath.Join(dir, "data"), EtcdEndpoints: etcd.Endpoints(),
		TLS:         pki.Files{CA: filepath.Join(pd, "ca.crt"), Cert: filepath.Join(pd, "server.crt"), Key: filepath.Join(pd, "server.key")},
		CheckPlugin: catalog.Validate, AggregateInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	waitLong(t, "server elected", srv.IsLeader)
	vigilctl := func(args ...string) (int, string, string) {
		t.Helper()
		env := map[string]string{"VIGIL_SERVER": "https://" + srv.Addr(), "VIGIL_CA": filepath.Join(pd, "ca.crt"),
			"VIGIL_CERT": filepath.Join(pd, "admin.crt"), "VIGIL_KEY": filepath.Join(pd, "admin.key"), "HOME": "/nonexistent"}
		var out, errb bytes.Buffer
		code := cli.Run(args, cli.Streams{In: strings.NewReader(""), Out: &out, Err: &errb}, func(k string) string { return env[k] })
		return code, out.String(), errb.String()
	}
	must := func(args ...string) string {
		t.Helper()
		code, out, errs := vigilctl(args...)
		if code != 0 {
			t.Fatalf("vigilctl %v: exit %d: %s%s", args, code, out, errs)
		}
		return out
	}

	const name = "tp-rb"
	key := newSigningKey(t)
	bodies := map[string][]byte{}
	bundleOf := func(version, binVersion string, rollback bool) string {
		t.Helper()
		if bodies[binVersion] == nil {
			bodies[binVersion] = releaseBody(t, filepath.Join(binDir, "vigil-testplugin"), binVersion)
		}
		return signedBundle(t, key.sec, name, version, bodies[binVersion], rollback)
	}
	must("release", "publish", bundleOf("1.0.0", "1.0.0", false))
	must("release", "publish", bundleOf("1.1.0", "1.1.0", false))

	// The host trusts the release key; short health window.
	trustFile := filepath.Join(dir, "trust.json")
	tf, _ := json.Marshal(signing.TrustFile{Threshold: 1, Keys: []string{key.pub.String()}})
	if err := os.WriteFile(trustFile, tf, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := hostConfig(t, testplugin(name, nil))
	cc := control.Default()
	cc.Endpoints = etcd.Endpoints()
	cc.LeaseTTL = 5 * time.Second
	cc.StatusInterval = 200 * time.Millisecond
	cfg.Control = &cc
	cfg.Server = &config.Server{URL: "https://" + srv.Addr(), CAFile: filepath.Join(pd, "ca.crt"),
		CertFile: filepath.Join(pd, "host.crt"), KeyFile: filepath.Join(pd, "host.key")}
	cfg.Update = &config.Update{TrustFile: trustFile, HealthWindow: 500 * time.Millisecond, StallTimeout: 5 * time.Second, Attempts: 3}
	a := start(t, cfg)
	host := cfg.HostName
	plugins := cfg.UpdateSettings().Dir

	reported := func(version string) func() bool {
		return func() bool {
			u := registration(t, etcdCli, host).Plugins[name].Update
			return u != nil && u.Target == version && u.Running == version && u.State == api.UpdateInstalled
		}
	}
	runs := func(version string) func() bool {
		return func() bool {
			st := pluginStatus(a, name)
			return st.State == supervisor.StateRunning && st.Path == update.BinaryPath(plugins, name, version)
		}
	}
	must("rollout", "set", name, "1.0.0", "--comment", "baseline")
	waitLong(t, "1.0.0 installed and reported", reported("1.0.0"))
	must("rollout", "set", name, "1.1.0", "--comment", "new")
	waitLong(t, "1.1.0 installed and reported", reported("1.1.0"))
	waitLong(t, "1.1.0 running", runs("1.1.0"))

	// Undo without a rollback release: refused, with the commands to run.
	code, _, errs := vigilctl("rollout", "undo", name)
	for _, want := range []string{"no rollback release of 1.0.0 is published",
		"vigil-sign sign -s RELEASE.key --binary BINARY --plugin " + name + " --version 1.0.0+rollback.1 --os " + runtime.GOOS + " --arch " + runtime.GOARCH + " --min-host-version 0.1.0 --rollback",
		"vigilctl release publish rollback-bundle/"} {
		if code != 1 || !strings.Contains(errs, want) {
			t.Fatalf("undo without a rollback release: exit %d, stderr %q lacks %q", code, errs, want)
		}
	}
	t.Logf("undo refused as it should:\n%s", errs)
	if code, _, errs := vigilctl("rollout", "set", name, "1.0.0"); code != 1 || !strings.Contains(errs, "hosts refuse a downgrade") {
		t.Fatalf("set to the lower version: exit %d %q", code, errs)
	}

	// 1.0.0's binary again as a signed rollback: the artifact is shared.
	out := must("release", "publish", bundleOf("1.0.0+rollback.1", "1.0.0", true))
	if !strings.Contains(out, "already stored") {
		t.Errorf("the rollback release did not share 1.0.0's artifact: %q", out)
	}
	out = must("rollout", "undo", name, "--comment", "1.1.0 misbehaves")
	if !strings.Contains(out, "-> 1.0.0+rollback.1") {
		t.Fatalf("undo: %q", out)
	}
	waitLong(t, "1.0.0+rollback.1 installed and reported", reported("1.0.0+rollback.1"))
	waitLong(t, "1.0.0's binary running again", runs("1.0.0+rollback.1"))
	sum := sha256.Sum256(bodies["1.0.0"])
	got, err := os.ReadFile(pluginStatus(a, name).Path)
	if err != nil {
		t.Fatal(err)
	}
	if g := sha256.Sum256(got); g != sum {
		t.Fatalf("the host runs %s, not 1.0.0's binary %s", hex.EncodeToString(g[:]), hex.EncodeToString(sum[:]))
	}
	out = must("rollout", "status", name)
	if !strings.Contains(out, "1.0.0+rollback.1") || !strings.Contains(out, "no failures") {
		t.Errorf("status: %q", out)
	}
}

// signedBundle makes a bundle with vigil-sign's code (signing.CreateBundle,
// SignBundle); rollback is vigil-sign sign --rollback.
func signedBundle(t *testing.T, sec minisign.PrivateKey, plugin, version string, bin []byte, rollback bool) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	b := filepath.Join(dir, "bundle")
	if _, err := signing.CreateBundle(b, src, signing.Manifest{Plugin: plugin, Version: version, OS: runtime.GOOS, Arch: runtime.GOARCH,
		Expires: time.Now().Add(24 * time.Hour), MinHostVersion: "0.1.0", Rollback: rollback}); err != nil {
		t.Fatal(err)
	}
	if _, err := signing.SignBundle(b, sec); err != nil {
		t.Fatal(err)
	}
	return b
}

// waitLong waits for cond with a generous bound (a loaded 2-core box
// builds, downloads and starts plugins slowly).
func waitLong(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
