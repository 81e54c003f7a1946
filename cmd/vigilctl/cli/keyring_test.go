package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server"
	"github.com/vigil-hids/vigil/server/pki"
	"github.com/vigil-hids/vigil/signing"
)

// startWithRoots is start with the server checking keyrings against the
// root keys of rootsFile (vigil-server --release-roots).
func startWithRoots(t *testing.T, rootsFile string) *fixture {
	t.Helper()
	dir := t.TempDir()
	pd := filepath.Join(dir, "pki")
	if _, err := pki.Init(pd, pki.Options{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := server.Start(ctx, server.Config{
		ID: "test-replica", Listen: "127.0.0.1:0", DataDir: filepath.Join(dir, "data"),
		EtcdClientURL: "http://127.0.0.1:0", EtcdPeerURL: "http://127.0.0.1:0",
		TLS:         pki.Files{CA: filepath.Join(pd, "ca.crt"), Cert: filepath.Join(pd, "server.crt"), Key: filepath.Join(pd, "server.key")},
		CheckPlugin: catalog.Validate, Releases: server.ReleaseConfig{RootsFile: rootsFile},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return &fixture{srv: s, pki: pd}
}

// TestKeyringRotationWithVigilSign rotates release keys as an operator
// would: keys, keyrings and root signatures made by the vigil-sign binary,
// published and inspected with vigilctl, against a server holding the
// root trust file.
func TestKeyringRotationWithVigilSign(t *testing.T) {
	dir := t.TempDir()
	signBin := filepath.Join(dir, "vigil-sign")
	if out, err := exec.Command("go", "build", "-o", signBin, "../../vigil-sign").CombinedOutput(); err != nil {
		t.Fatalf("go build vigil-sign: %v\n%s", err, out)
	}
	sign := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(signBin, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("vigil-sign %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	keyID := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name+".pub"))
		if err != nil {
			t.Fatal(err)
		}
		pub, err := signing.ParsePublicKey(b)
		if err != nil {
			t.Fatal(err)
		}
		return signing.KeyID(pub.ID())
	}
	for _, k := range []string{"root1", "root2", "rel1", "rel2"} {
		sign("keygen", "-W", "-p", k+".pub", "-s", k+".key")
	}
	sign("trust", "-k", "1", "--out", "roots.json", "root1.pub", "root2.pub")
	f := startWithRoots(t, filepath.Join(dir, "roots.json"))
	kr1, kr2 := filepath.Join(dir, "keyring1.json"), filepath.Join(dir, "keyring2.json")

	if r := f.run(t, "admin", "", "keyring", "show"); r.code != ExitError || !strings.Contains(r.err, "no keyring published") {
		t.Fatalf("show before any publish: %+v", r)
	}
	sign("keyring", "create", "-k", "1", "--serial", "1", "--expires", "24h", "keyring1.json", "rel1.pub", "rel2.pub")
	if r := f.run(t, "admin", "", "keyring", "publish", kr1); r.code != ExitError || !strings.Contains(r.err, "not signed by enough root keys") {
		t.Fatalf("publish unsigned: %+v", r)
	}
	sign("keyring", "sign", "-s", "root1.key", "keyring1.json")
	if r := f.run(t, "operator", "", "keyring", "publish", kr1); r.code != ExitError || !strings.Contains(r.err, "may not publish") {
		t.Fatalf("operator publish: %+v", r)
	}
	if r := f.run(t, "host", "", "keyring", "show"); r.code != ExitError || !strings.Contains(r.err, "no keyring published") {
		t.Fatalf("a refused publish stored something: %+v", r)
	}
	out := f.mustRun(t, "admin", "", "keyring", "publish", kr1)
	if !strings.Contains(out, "keyring serial 1: created") || !strings.Contains(out, keyID("root1")) {
		t.Fatalf("publish: %q", out)
	}
	if out = f.mustRun(t, "admin", "", "keyring", "publish", kr1); !strings.Contains(out, "keyring serial 1: unchanged") {
		t.Fatalf("publish again: %q", out)
	}
	sign("keyring", "sign", "-s", "root2.key", "keyring1.json")
	if out = f.mustRun(t, "admin", "", "keyring", "publish", kr1); !strings.Contains(out, "keyring serial 1: updated") {
		t.Fatalf("publish with a second root signature: %q", out)
	}
	raw1, _ := os.ReadFile(kr1)
	resp, err := f.srv.Store().Client().Get(context.Background(), f.srv.Store().Keyspace().Keyring())
	if err != nil || len(resp.Kvs) != 1 || !bytes.Equal(resp.Kvs[0].Value, raw1) {
		t.Fatalf("etcd does not hold keyring1.json byte for byte: %v", err)
	}

	out = f.mustRun(t, "auditor", "", "keyring", "show")
	t.Logf("vigilctl keyring show:\n%s", out)
	for _, want := range []string{"serial:", "1 of 2 release keys", keyID("rel1"), keyID("rel2"), keyID("root1"), keyID("root2"),
		"by admin at", "signatures added:"} {
		if !strings.Contains(out, want) {
			t.Fatalf("show lacks %q:\n%s", want, out)
		}
	}
	var info api.KeyringInfo
	if err := json.Unmarshal([]byte(f.mustRun(t, "host", "", "keyring", "show", "-o", "json")), &info); err != nil {
		t.Fatal(err)
	}
	if info.Serial != 1 || info.PublishedBy != "admin" || info.Revision != resp.Kvs[0].ModRevision || len(info.RootSigners) != 2 {
		t.Fatalf("show -o json: %+v", info)
	}

	// Rotate: serial 2 drops rel1.
	sign("keyring", "create", "-k", "1", "--serial", "2", "--expires", "24h", "keyring2.json", "rel2.pub")
	sign("keyring", "sign", "-s", "root2.key", "keyring2.json")
	if out = f.mustRun(t, "admin", "", "keyring", "publish", kr2); !strings.Contains(out, "keyring serial 2: created") {
		t.Fatalf("publish serial 2: %q", out)
	}
	if r := f.run(t, "admin", "", "keyring", "publish", kr1); r.code != ExitError ||
		!strings.Contains(r.err, "keyring serial 1 is lower than serial 2") {
		t.Fatalf("publish serial 1 after 2: %+v", r)
	}
	if out = f.mustRun(t, "admin", "", "keyring", "show"); strings.Contains(out, keyID("rel1")) {
		t.Fatalf("the refused serial 1 came back:\n%s", out)
	}
	out = f.mustRun(t, "auditor", "", "keyring", "history")
	t.Logf("vigilctl keyring history:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "1 ") || !strings.HasPrefix(lines[2], "2 ") ||
		!strings.Contains(lines[1], "by admin at") || !strings.Contains(lines[2], keyID("rel2")) || strings.Contains(lines[2], keyID("rel1")) {
		t.Fatalf("history:\n%s", out)
	}
	var recs []api.KeyringRecord
	if err := json.Unmarshal([]byte(f.mustRun(t, "auditor", "", "keyring", "history", "-o", "json")), &recs); err != nil ||
		len(recs) != 2 || recs[0].PublishedBy != "admin" || recs[1].Serial != 2 {
		t.Fatalf("history -o json: %+v, %v", recs, err)
	}

	// Serial 1's record damaged in etcd: serial 2 is still listed, and the
	// damaged one is a row saying so, with its key and error below.
	bad := f.srv.Store().Keyspace().KeyringRecordKey(1)
	if _, err := f.srv.Store().Client().Put(context.Background(), bad, "garbage{"); err != nil {
		t.Fatal(err)
	}
	out = f.mustRun(t, "auditor", "", "keyring", "history")
	t.Logf("vigilctl keyring history, serial 1 damaged:\n%s", out)
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 || !strings.HasPrefix(lines[1], "1 ") || !strings.Contains(lines[1], "(unreadable record, see below)") ||
		!strings.HasPrefix(lines[2], "2 ") || !strings.Contains(lines[2], keyID("rel2")) ||
		!strings.Contains(lines[4], "1 history record(s) could not be decoded") ||
		!strings.Contains(lines[5], bad+": unreadable record: invalid character 'g'") {
		t.Fatalf("history with a damaged record:\n%s", out)
	}
	recs = nil
	if err := json.Unmarshal([]byte(f.mustRun(t, "auditor", "", "keyring", "history", "-o", "json")), &recs); err != nil ||
		len(recs) != 2 || recs[0].Key != bad || recs[0].Error == "" || recs[1].Serial != 2 || recs[1].Error != "" {
		t.Fatalf("history -o json with a damaged record: %+v, %v", recs, err)
	}
}
