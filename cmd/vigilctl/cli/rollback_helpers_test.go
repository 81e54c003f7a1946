package cli

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"aead.dev/minisign"
	"github.com/vigil-hids/vigil/signing"
)

// rollbackBundle makes a signed bundle like bundle, with the manifest's
// rollback flag set (vigil-sign sign --rollback).
func rollbackBundle(t *testing.T, sec minisign.PrivateKey, plugin, version string, bin []byte) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	b := filepath.Join(dir, "bundle")
	if _, err := signing.CreateBundle(b, src, signing.Manifest{Plugin: plugin, Version: version, OS: "linux", Arch: "amd64",
		Expires: time.Now().Add(24 * time.Hour), MinHostVersion: "0.1.0", Rollback: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := signing.SignBundle(b, sec); err != nil {
		t.Fatal(err)
	}
	return b
}
