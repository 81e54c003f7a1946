package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLIRollbackRelease: the documented way to make a rollback release,
// the old binary under a version with build metadata signed with
// --rollback, verifies over a newer running version; the same version
// without --rollback is refused as a downgrade.
func TestCLIRollbackRelease(t *testing.T) {
	dir := t.TempDir()
	must(t, dir, "keygen", "-W", "-p", "a.pub", "-s", "a.key")
	must(t, dir, "trust", "-k", "1", "--out", "trust.json", "a.pub")
	if err := os.WriteFile(filepath.Join(dir, "procmon"), bytes.Repeat([]byte{0x7f, 'E', 'L', 'F'}, 100), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []struct {
		name string
		args []string
	}{{"plain", nil}, {"rollback", []string{"--rollback"}}} {
		args := append([]string{"sign", "-s", "a.key", "--binary", "procmon", "--plugin", "procmon", "--version", "1.2.0+rollback.1",
			"--os", "linux", "--arch", "amd64", "--min-host-version", "1.0.0", "--expires", "720h"}, b.args...)
		must(t, dir, append(args, b.name)...)
	}
	out := must(t, dir, "verify", "--trust", "trust.json", "--plugin", "procmon", "--running", "1.3.0", "rollback")
	if !strings.Contains(out, "procmon 1.2.0+rollback.1") {
		t.Errorf("verify: %q", out)
	}
	code, _, errOut := vs(t, dir, "verify", "--trust", "trust.json", "--plugin", "procmon", "--running", "1.3.0", "plain")
	if code == 0 || !strings.Contains(errOut, "downgrade without signed rollback") {
		t.Fatalf("plain downgrade: exit %d %q", code, errOut)
	}
	// Same precedence as 1.2.0: not a downgrade from it.
	must(t, dir, "verify", "--trust", "trust.json", "--plugin", "procmon", "--running", "1.2.0", "plain")
}
