package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/host/update"
	"github.com/vigil-hids/vigil/server/client"
	"github.com/vigil-hids/vigil/server/pki"
	"github.com/vigil-hids/vigil/signing"
)

// TestHostFetchesWhatVigilctlPublished runs the host's own fetch code
// (host/update) against a real server after vigilctl published a bundle:
// the manifest as published verifies with the host's pinned key, and the
// download over mutual TLS with the host certificate is the signed binary.
func TestHostFetchesWhatVigilctlPublished(t *testing.T) {
	f := start(t)
	pub, sec, err := signing.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	bin := bytes.Repeat([]byte("vigil example 2.0.0 "), 50000)
	dir := bundle(t, sec, "example", "2.0.0", bin)
	f.mustRun(t, "admin", "", "release", "publish", dir)

	cl, err := client.New(client.Config{Server: "https://" + f.srv.Addr(), TLS: pki.Files{CA: filepath.Join(f.pki, "ca.crt"),
		Cert: filepath.Join(f.pki, "host.crt"), Key: filepath.Join(f.pki, "host.key")}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	raw, err := cl.Manifest(ctx, "example", "2.0.0", "linux", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := signing.NewTrust(1, pub)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	path, v, err := update.Fetch(ctx, update.Request{Manifest: raw, Trust: update.Trust{Keys: &keys},
		Expect: signing.Expect{Now: time.Now(), Plugin: "example", OS: "linux", Arch: "amd64", Running: "1.0.0", HostVersion: "1.0.0"},
		Source: update.Source{Client: f.httpsAs(t, "host"), BaseURL: "https://" + f.srv.Addr()}, Dir: out})
	if err != nil {
		t.Fatalf("host fetch: %v", err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, bin) || v.Signers != 1 || filepath.Dir(path) != out {
		t.Fatalf("fetched %d bytes at %s (signers %d): %v", len(got), path, v.Signers, err)
	}
}
