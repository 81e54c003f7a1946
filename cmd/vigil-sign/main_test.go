package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// vs runs vigil-sign in-process in dir and returns exit status and output.
func vs(t *testing.T, dir string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	e := env{in: strings.NewReader(""), out: &out, errOut: &errOut,
		now:          func() time.Time { return now },
		readPassword: func(string) (string, error) { return "", errors.New("no prompt in tests") }}
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(wd)
	code := run(args, e)
	return code, out.String(), errOut.String()
}

func must(t *testing.T, dir string, args ...string) string {
	t.Helper()
	code, out, errOut := vs(t, dir, args...)
	if code != 0 {
		t.Fatalf("vigil-sign %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func TestCLIReleaseFlow(t *testing.T) {
	dir := t.TempDir()
	for _, k := range []string{"a", "b", "root1", "root2"} {
		must(t, dir, "keygen", "-W", "-p", k+".pub", "-s", k+".key")
	}
	if err := os.WriteFile(filepath.Join(dir, "procmon"), bytes.Repeat([]byte{0x7f, 'E', 'L', 'F'}, 1000), 0o755); err != nil {
		t.Fatal(err)
	}
	must(t, dir, "sign", "-s", "a.key", "--binary", "procmon", "--plugin", "procmon", "--version", "1.2.0",
		"--os", "linux", "--arch", "amd64", "--min-host-version", "1.0.0", "--expires", "720h", "bundle")
	must(t, dir, "sign", "-s", "b.key", "bundle")
	must(t, dir, "trust", "-k", "2", "--out", "trust.json", "a.pub", "b.pub")
	must(t, dir, "trust", "-k", "2", "--out", "roots.json", "root1.pub", "root2.pub")

	out := must(t, dir, "verify", "-o", "json", "--trust", "trust.json", "--plugin", "procmon", "--os", "linux", "--arch", "amd64", "bundle")
	var got struct {
		Signers   int `json:"signers"`
		Threshold int `json:"threshold"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Signers != 2 || got.Threshold != 2 {
		t.Fatalf("verify -o json = %s (%v)", out, err)
	}

	must(t, dir, "keyring", "create", "-k", "2", "keyring.json", "a.pub", "b.pub")
	if code, _, errOut := vs(t, dir, "verify", "--keyring", "keyring.json", "--roots", "roots.json", "bundle"); code == 0 || !strings.Contains(errOut, "keyring not signed") {
		t.Fatalf("unsigned keyring accepted: %d %s", code, errOut)
	}
	must(t, dir, "keyring", "sign", "-s", "root1.key", "keyring.json")
	must(t, dir, "keyring", "sign", "-s", "root2.key", "keyring.json")
	must(t, dir, "keyring", "verify", "--roots", "roots.json", "keyring.json")
	must(t, dir, "verify", "--keyring", "keyring.json", "--roots", "roots.json", "bundle")

	// The stock tool checks the binary with each key's .minisig.
	id := strings.TrimSpace(strings.TrimPrefix(strings.SplitN(readFile(t, filepath.Join(dir, "a.pub")), "\n", 2)[0], "untrusted comment: minisign public key "))
	if out, err := exec.Command("minisign", "-V", "-p", filepath.Join(dir, "a.pub"), "-m", filepath.Join(dir, "bundle", "binary"),
		"-x", filepath.Join(dir, "bundle", "binary."+id+".minisig")).CombinedOutput(); err != nil {
		t.Fatalf("minisign -V: %v\n%s", err, out)
	}

	// And the manifest body, exported with each signature.
	must(t, dir, "export", "bundle", "exported")
	if out, err := exec.Command("minisign", "-V", "-p", filepath.Join(dir, "a.pub"), "-m", filepath.Join(dir, "exported", "manifest.body"),
		"-x", filepath.Join(dir, "exported", "manifest.body."+id+".minisig")).CombinedOutput(); err != nil {
		t.Fatalf("minisign -V on the exported manifest body: %v\n%s", err, out)
	}

	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "downgrade", args: []string{"verify", "--trust", "trust.json", "--running", "2.0.0", "bundle"}, wantErr: "downgrade without signed rollback"},
		{name: "other plugin", args: []string{"verify", "--trust", "trust.json", "--plugin", "netmon", "bundle"}, wantErr: "another plugin"},
		{name: "other arch", args: []string{"verify", "--trust", "trust.json", "--arch", "arm64", "bundle"}, wantErr: "another platform"},
		{name: "threshold of three", args: []string{"verify", "--trust", "trust3.json", "bundle"}, wantErr: "too few distinct trusted keys"},
		{name: "replayed keyring", args: []string{"verify", "--keyring", "keyring.json", "--roots", "roots.json", "--min-keyring-serial", "2", "bundle"}, wantErr: "keyring older than one already accepted"},
		{name: "neither trust nor keyring", args: []string{"verify", "bundle"}, wantErr: "either --trust"},
		{name: "password as flag value is not a flag", args: []string{"keygen", "--password", "x"}, wantErr: "unknown flag"},
		{name: "keygen refuses to overwrite", args: []string{"keygen", "-W", "-p", "a.pub", "-s", "a.key"}, wantErr: "exists"},
	}
	must(t, dir, "keygen", "-W", "-p", "c.pub", "-s", "c.key")
	must(t, dir, "trust", "-k", "3", "--out", "trust3.json", "a.pub", "b.pub", "c.pub")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := vs(t, dir, tt.args...)
			if code == 0 || !strings.Contains(errOut, tt.wantErr) {
				t.Fatalf("exit %d, stderr %q, want %q", code, errOut, tt.wantErr)
			}
		})
	}

	// A tampered binary in the bundle.
	if err := os.WriteFile(filepath.Join(dir, "bundle", "binary"), bytes.Repeat([]byte{0x7f, 'E', 'L', 'G'}, 1000), 0o755); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := vs(t, dir, "verify", "--trust", "trust.json", "bundle"); code == 0 || !strings.Contains(errOut, "sha256 mismatch") {
		t.Fatalf("tampered binary: exit %d %s", code, errOut)
	}
}

func TestCLIPasswordFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pw"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	must(t, dir, "keygen", "--password-file", "pw", "-p", "k.pub", "-s", "k.key")
	if !strings.Contains(readFile(t, filepath.Join(dir, "k.key")), "encrypted secret key") {
		t.Fatal("secret key not encrypted")
	}
	must(t, dir, "keyring", "create", "kr.json", "k.pub")
	// No password file and no terminal: refused, not signed with an empty password.
	if code, _, errOut := vs(t, dir, "keyring", "sign", "-s", "k.key", "kr.json"); code == 0 || !strings.Contains(errOut, "no prompt") {
		t.Fatalf("signing without a password: exit %d %s", code, errOut)
	}
	must(t, dir, "keyring", "sign", "-s", "k.key", "--password-file", "pw", "kr.json")
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
