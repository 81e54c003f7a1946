package agent_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/config"
	"github.com/vigil-hids/vigil/host/control"
	"github.com/vigil-hids/vigil/host/supervisor"
	"github.com/vigil-hids/vigil/host/update"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/signing"
)

// keyringJSON is keyring.json listing keys (threshold 1), signed by roots.
func keyringJSON(t *testing.T, serial uint64, keys []signingKey, roots ...signingKey) []byte {
	t.Helper()
	kr := signing.SignedKeyring{Keyring: signing.Keyring{Serial: serial, Expires: time.Now().Add(time.Hour), Threshold: 1}}
	for _, k := range keys {
		kr.Keyring.Keys = append(kr.Keyring.Keys, k.pub.String())
	}
	for _, r := range roots {
		if err := kr.Sign(r.sec); err != nil {
			t.Fatal(err)
		}
	}
	b, err := kr.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFleetRotatesReleaseKeys drives a real host that pins only a root key
// through etcd: a release signed by a key its keyring file does not list
// is refused; the keyring published at /hids/keyring/current that lists
// the key is taken (the registration says its serial) and the refused
// release installs without a new desired version; a published keyring no
// root signed is refused and reported while the host keeps serial 2 and
// its release; a restarted host starts from serial 2.
func TestFleetRotatesReleaseKeys(t *testing.T) {
	etcd := etcdtest.StartEmbedded(t)
	cli := etcd.Client(t)
	rel, url := newReleases(t, cli)
	root, k1, k2 := newSigningKey(t), newSigningKey(t), newSigningKey(t)
	dir := t.TempDir()
	rootsFile, keyringFile := filepath.Join(dir, "roots.json"), filepath.Join(dir, "keyring.json")
	rf, _ := json.Marshal(signing.TrustFile{Threshold: 1, Keys: []string{root.pub.String()}})
	if err := os.WriteFile(rootsFile, rf, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyringFile, keyringJSON(t, 1, []signingKey{k1}, root), 0o600); err != nil {
		t.Fatal(err)
	}

	const name = "tp-keys"
	cfg := hostConfig(t, testplugin(name, nil))
	cc := control.Default()
	cc.Endpoints = etcd.Endpoints()
	cc.LeaseTTL = 5 * time.Second
	cc.StatusInterval = 200 * time.Millisecond
	cfg.Control = &cc
	cfg.Server = &config.Server{URL: url}
	cfg.Update = &config.Update{RootsFile: rootsFile, KeyringFile: keyringFile, HealthWindow: time.Second,
		StallTimeout: 2 * time.Second, Attempts: 2, KeyringRefresh: time.Second}
	a := start(t, cfg)
	host := cfg.HostName
	keyringOf := func() api.KeyringStatus {
		if k := registration(t, cli, host).Keyring; k != nil {
			return *k
		}
		return api.KeyringStatus{}
	}
	waitFor(t, "keyring serial 1 in the registration", func() bool { return keyringOf().Serial == 1 })

	rel.publish(name, "1.1.0", releaseBody(t, filepath.Join(binDir, "vigil-testplugin"), "1.1.0"), false, k2)
	putScope(t, cli, api.Scope{Kind: api.ScopeHost, Host: host}, api.DesiredState{
		Plugins: map[string]api.PluginState{name: {Version: "1.1.0"}},
	})
	var u api.UpdateStatus
	waitFor(t, "1.1.0 refused", func() bool {
		if p := registration(t, cli, host).Plugins[name].Update; p != nil {
			u = *p
		}
		return u.Target == "1.1.0" && u.State == api.UpdateRefused
	})
	if !strings.Contains(u.Error, "too few distinct trusted keys") {
		t.Errorf("refusal %q", u.Error)
	}

	ks := api.NewKeyspace("")
	if _, err := cli.Put(context.Background(), ks.Keyring(), string(keyringJSON(t, 2, []signingKey{k2}, root))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "1.1.0 installed after the rotation", func() bool {
		p := registration(t, cli, host).Plugins[name].Update
		return p != nil && p.Target == "1.1.0" && p.State == api.UpdateInstalled
	})
	waitFor(t, "keyring serial 2 in the registration", func() bool { k := keyringOf(); return k.Serial == 2 && k.Error == "" })
	waitFor(t, "1.1.0 running", func() bool {
		st := pluginStatus(a, name)
		return st.Path == update.BinaryPath(cfg.UpdateSettings().Dir, name, "1.1.0") && st.State == supervisor.StateRunning
	})
	pid := pluginStatus(a, name).PID
	// `vigil-host status` shows the same.
	snap := a.Snapshot()
	if snap.Keyring == nil || snap.Keyring.Serial != 2 {
		t.Errorf("status keyring %+v", snap.Keyring)
	}
	for _, p := range snap.Plugins {
		if p.Name == name && (p.Update == nil || p.Update.State != api.UpdateInstalled || p.Update.Running != "1.1.0") {
			t.Errorf("status update of %s: %+v", name, p.Update)
		}
	}

	// A keyring signed by a release key, not a root: refused, reported.
	if _, err := cli.Put(context.Background(), ks.Keyring(), string(keyringJSON(t, 3, []signingKey{k1, k2}, k2))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "keyring serial 3 refused in the registration", func() bool { return keyringOf().Refused == 3 })
	if k := keyringOf(); k.Serial != 2 || !strings.Contains(k.Error, "not signed by enough root keys") {
		t.Errorf("keyring status %+v", k)
	}
	if st := pluginStatus(a, name); st.PID != pid {
		t.Errorf("a refused keyring disturbed the running plugin: %+v", st)
	}
	logText, _ := os.ReadFile(cfg.Log.File)
	if !strings.Contains(string(logText), "published release keyring refused") {
		t.Error("the refusal is not in the host log")
	}

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(context.Background(), ks.Keyring()); err != nil {
		t.Fatal(err)
	}
	start(t, cfg)
	waitFor(t, "keyring serial 2 after a restart", func() bool { return keyringOf().Serial == 2 })
}
