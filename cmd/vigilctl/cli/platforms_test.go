package cli

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/rollout"
	"github.com/vigil-hids/vigil/server/store"
	"github.com/vigil-hids/vigil/signing"
)

// registerOn writes a registration as host/control does, with a platform
// (empty: an agent older than the field).
func registerOn(t *testing.T, f *fixture, name, goos, arch string, labels map[string]string) {
	t.Helper()
	b, _ := json.Marshal(api.Registration{Host: name, Version: "1.0", OS: goos, Arch: arch, Labels: labels})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := f.srv.Store().Client().Put(ctx, f.srv.Store().Keyspace().Agent(name), string(b)); err != nil {
		t.Fatal(err)
	}
}

// TestRolloutPlatformWarnings: agents ls shows each host's platform;
// rollout set of a version published for linux/amd64 only warns (stderr,
// and "warnings" in JSON) about the arm64 hosts of the scope, and with
// --require-platforms is refused, writing nothing; undo takes the flag too.
func TestRolloutPlatformWarnings(t *testing.T) {
	f := start(t)
	_, sec, err := signing.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	prod := map[string]string{"env": "prod"}
	registerOn(t, f, "web-amd", "linux", "amd64", prod)
	registerOn(t, f, "web-arm-1", "linux", "arm64", prod)
	registerOn(t, f, "web-arm-2", "linux", "arm64", prod)
	registerOn(t, f, "web-old", "", "", prod)
	registerOn(t, f, "db-arm", "linux", "arm64", map[string]string{"env": "db"})

	out := f.mustRun(t, "auditor", "", "agents", "ls", "--label", "env=prod")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 || !strings.Contains(lines[0], "VERSION  PLATFORM     LABELS") {
		t.Fatalf("agents ls:\n%s", out)
	}
	for _, want := range []string{"web-amd    1.0      linux/amd64  env=prod", "web-arm-1  1.0      linux/arm64", "web-old    1.0      -            env=prod"} {
		if !strings.Contains(out, want) {
			t.Fatalf("agents ls has no %q:\n%s", want, out)
		}
	}

	f.mustRun(t, "admin", "", "release", "publish", bundle(t, sec, "example", "1.0.0", []byte("example 1.0.0")))
	warning := "warning: 2 hosts in scope group:env=prod run linux/arm64, which example 1.0.0 is not published for; they will report failed until it is\n"
	strict := f.run(t, "operator", "", "rollout", "set", "example", "1.0.0", "--scope", "group:env=prod", "--require-platforms")
	if strict.code != 1 || !strings.Contains(strict.err, strings.TrimPrefix(strings.TrimSuffix(warning, "\n"), "warning: ")) {
		t.Fatalf("strict set: %+v", strict)
	}
	var cur store.Current
	if err := json.Unmarshal([]byte(f.mustRun(t, "auditor", "", "config", "get", "--scope", "group:env=prod", "-o", "json")), &cur); err != nil {
		t.Fatal(err)
	}
	if cur.Revision != 0 || cur.Document.State.Plugins["example"].Version != "" {
		t.Fatalf("a refused rollout wrote the group: %+v", cur)
	}
	r := f.run(t, "operator", "", "rollout", "set", "example", "1.0.0", "--scope", "group:env=prod")
	if r.code != 0 || r.err != warning || !strings.Contains(r.out, "registered hosts it targets, by platform: linux/amd64 1, linux/arm64 2, unknown 1") {
		t.Fatalf("set with a warning: %+v", r)
	}
	// JSON carries the warnings and the counts.
	r = f.run(t, "admin", "", "rollout", "set", "example", "1.0.0", "-o", "json")
	var res rollout.SetResult
	if err := json.Unmarshal([]byte(r.out), &res); r.code != 0 || err != nil || len(res.Warnings) != 1 ||
		!strings.HasPrefix(res.Warnings[0], "3 hosts in scope fleet run linux/arm64") || res.HostPlatforms["linux/arm64"] != 3 {
		t.Fatalf("set -o json: %+v %v", r, err)
	}

	// Published for arm64 too: no warning, even strict.
	f.mustRun(t, "admin", "", "release", "publish", bundle(t, sec, "example", "1.1.0", []byte("example 1.1.0")))
	f.mustRun(t, "admin", "", "release", "publish", bundleFor(t, sec, "example", "1.1.0", "linux", "arm64", []byte("example 1.1.0 arm64")))
	if r := f.run(t, "admin", "", "rollout", "set", "example", "1.1.0", "--require-platforms"); r.code != 0 || r.err != "" {
		t.Fatalf("strict set of a version published for both: %+v", r)
	}

	// Undo goes back to 1.0.0's rollback release, amd64 only: refused
	// with the flag, a warning without.
	f.mustRun(t, "admin", "", "release", "publish", rollbackBundle(t, sec, "example", "1.0.0+rollback.1", []byte("example 1.0.0")))
	if r := f.run(t, "admin", "", "rollout", "undo", "example", "--require-platforms"); r.code != 1 ||
		!strings.Contains(r.err, "3 hosts in scope fleet run linux/arm64, which example 1.0.0+rollback.1 is not published for") {
		t.Fatalf("strict undo: %+v", r)
	}
	if r := f.run(t, "admin", "", "rollout", "undo", "example"); r.code != 0 || !strings.HasPrefix(r.err, "warning: 3 hosts in scope fleet run linux/arm64") {
		t.Fatalf("undo: %+v", r)
	}
	// The undo route's flag is true or false, nothing else.
	resp, err := f.httpsAs(t, "admin").Post("https://"+f.srv.Addr()+"/v1/rollouts/example/undo?require_platforms=yes", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `require_platforms must be true or false (got \"yes\")`) {
		t.Fatalf("require_platforms=yes: %d %s", resp.StatusCode, body)
	}
}
