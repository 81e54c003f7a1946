package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/vigil-hids/vigil/server/artifacts"
	"github.com/vigil-hids/vigil/signing"
)

func TestReleaseRmAndGC(t *testing.T) {
	f := start(t)
	_, sec, err := signing.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	v1 := bundle(t, sec, "example", "1.1.0", []byte("example 1.1.0"))
	v2 := bundle(t, sec, "example", "1.2.0", []byte("example 1.2.0"))
	f.mustRun(t, "admin", "", "release", "publish", v1)
	f.mustRun(t, "admin", "", "release", "publish", v2)
	f.mustRun(t, "admin", "", "rollout", "set", "example", "1.1.0", "--comment", "first")
	f.mustRun(t, "operator", "", "rollout", "set", "example", "1.2.0", "--scope", "group:env=canary", "--percent", "10", "--comment", "canary")

	for _, tt := range []struct {
		name string
		role string
		args []string
		want string
	}{
		{"no comment", "admin", []string{"release", "rm", "example", "1.1.0"}, "--comment is required"},
		{"bad platform", "admin", []string{"release", "rm", "example", "1.1.0", "--platform", "linux", "--comment", "x"}, "--platform must be OS/ARCH"},
		{"operator", "operator", []string{"release", "rm", "example", "1.1.0", "--comment", "x"}, "releases are published by admins"},
		{"asked for", "admin", []string{"release", "rm", "example", "1.1.0", "--comment", "x"}, "fleet (version); group:env=canary (rollout from)"},
		{"short grace", "admin", []string{"release", "gc", "--grace", "1s"}, "--grace must be at least 1m"},
	} {
		if r := f.run(t, tt.role, "", tt.args...); r.code != 1 || !strings.Contains(r.err, tt.want) {
			t.Fatalf("%s: %+v, want exit 1 with %q", tt.name, r, tt.want)
		} else {
			t.Logf("%s: %s", tt.name, r.err)
		}
	}
	if out := f.mustRun(t, "auditor", "", "release", "ls", "example"); !strings.Contains(out, "1.1.0") {
		t.Fatalf("a refused rm removed the release: %q", out)
	}

	// Move the fleet off 1.1.0, then remove it.
	f.mustRun(t, "operator", "", "rollout", "set", "example", "1.2.0", "--scope", "group:env=canary", "--comment", "all of canary")
	f.mustRun(t, "admin", "", "rollout", "set", "example", "1.2.0", "--comment", "fleet")
	out := f.mustRun(t, "admin", "", "release", "rm", "example", "1.1.0", "--platform", "linux/amd64", "--comment", "leaks memory")
	if !strings.Contains(out, "example 1.1.0 linux/amd64: removed at revision") {
		t.Fatalf("rm: %q", out)
	}
	if out := f.mustRun(t, "auditor", "", "release", "ls", "example"); strings.Contains(out, "1.1.0") || !strings.Contains(out, "1.2.0") {
		t.Fatalf("ls after rm: %q", out)
	}
	out = f.mustRun(t, "auditor", "", "release", "ls", "--removed")
	if !strings.Contains(out, "example  1.1.0") || !strings.Contains(out, "admin") || !strings.Contains(out, "leaks memory") {
		t.Fatalf("ls --removed: %q", out)
	}
	t.Logf("ls --removed:\n%s", out)

	// Another binary under 1.1.0 is refused; the removed bundle restores it.
	other := bundle(t, sec, "example", "1.1.0", []byte("example 1.1.0, rebuilt"))
	if r := f.run(t, "admin", "", "release", "publish", other); r.code != 1 || !strings.Contains(r.err, "removed by admin") {
		t.Fatalf("publish other bytes under a removed version: %+v", r)
	}
	if out := f.mustRun(t, "admin", "", "release", "publish", v1); !strings.Contains(out, "restored") {
		t.Fatalf("restore: %q", out)
	}
	f.mustRun(t, "admin", "", "release", "rm", "example", "1.1.0", "--comment", "again")

	// The binary stays until gc, which keeps it within the grace period.
	var rep artifacts.GCReport
	out = f.mustRun(t, "admin", "", "-o", "json", "release", "gc", "--dry-run")
	if err := json.Unmarshal([]byte(out), &rep); err != nil || !rep.DryRun || len(rep.Removed) != 0 || len(rep.Young) != 1 || rep.Named != 1 {
		t.Fatalf("gc --dry-run: %+v %v\n%s", rep, err, out)
	}
	out = f.mustRun(t, "admin", "", "release", "gc")
	if !strings.Contains(out, "removed 0 artifacts, 0 bytes; kept 1 named by a manifest") || !strings.Contains(out, "within the grace period 1h0m0s") {
		t.Fatalf("gc: %q", out)
	}
	t.Logf("gc:\n%s", out)
	if bytes.Contains([]byte(out), []byte("would remove")) {
		t.Fatalf("gc without --dry-run says would: %q", out)
	}
}
