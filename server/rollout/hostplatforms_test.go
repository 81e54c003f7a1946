package rollout

import (
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/vigil-hids/vigil/api"
)

// platformFleet registers, as host/control writes them, prod hosts of
// linux/amd64 (3), linux/arm64 (2) and one old agent that names no
// platform, and canary hosts of each platform.
func platformFleet(t *testing.T, e *env) {
	t.Helper()
	prod, canary := map[string]string{"env": "prod"}, map[string]string{"env": "canary"}
	for _, r := range []api.Registration{
		{Host: "p-amd-1", OS: "linux", Arch: "amd64", Labels: prod},
		{Host: "p-amd-2", OS: "linux", Arch: "amd64", Labels: prod},
		{Host: "p-amd-3", OS: "linux", Arch: "amd64", Labels: prod},
		{Host: "p-arm-1", OS: "linux", Arch: "arm64", Labels: prod},
		{Host: "p-arm-2", OS: "linux", Arch: "arm64", Labels: prod},
		{Host: "p-old", Labels: prod},
		{Host: "c-amd-1", OS: "linux", Arch: "amd64", Labels: canary},
		{Host: "c-arm-1", OS: "linux", Arch: "arm64", Labels: canary},
	} {
		r.Version = "1.0.0"
		putRegistration(t, e, r)
	}
}

// publishArm64 publishes plugin's version for linux/arm64 (its own binary).
func (e *env) publishArm64(t *testing.T, plugin, version string) {
	t.Helper()
	sm, raw := manifestFor(t, plugin, version, "linux", "arm64", []byte(plugin+version+" arm64"), "k1")
	if _, err := e.svc.Publish(ctx(t), raw, sm); err != nil {
		t.Fatal(err)
	}
}

// scopeRevision is the etcd mod revision of scope's document (0: none).
func (e *env) scopeRevision(t *testing.T, scope api.Scope) int64 {
	t.Helper()
	resp, err := e.cli.Get(ctx(t), e.ks.ScopeKey(scope))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].ModRevision
}

// TestSetWarnsAboutUnpublishedPlatforms: a version published for
// linux/amd64 only is written with a warning naming the arm64 hosts it
// targets in the scope; with RequirePlatforms it is refused and the
// scope's document stays as it was; published for arm64 too, no warning.
// Old agents (no platform) are counted as unknown and never warned about.
func TestSetWarnsAboutUnpublishedPlatforms(t *testing.T) {
	for _, withIndex := range []bool{true, false} {
		t.Run(fmt.Sprintf("index=%v", withIndex), func(t *testing.T) {
			e := newEnv(t, withIndex)
			c := ctx(t)
			platformFleet(t, e)
			e.publish(t, "example", "1.2.0")
			fleet := api.Scope{Kind: api.ScopeFleet}
			prod := api.Scope{Kind: api.ScopeGroup, Label: "env", Value: "prod"}

			res, err := e.svc.Set(c, SetRequest{Scope: prod, Plugin: "example", Version: "1.2.0", Author: "op"})
			if err != nil {
				t.Fatal(err)
			}
			want := "2 hosts in scope group:env=prod run linux/arm64, which example 1.2.0 is not published for; they will report failed until it is"
			if len(res.Warnings) != 1 || res.Warnings[0] != want {
				t.Fatalf("warnings %q, want %q", res.Warnings, want)
			}
			if w := map[string]int64{"linux/amd64": 3, "linux/arm64": 2, "unknown": 1}; !maps.Equal(res.HostPlatforms, w) {
				t.Fatalf("host platforms %v, want %v", res.HostPlatforms, w)
			}
			if cur, err := e.st.Get(c, prod); err != nil || cur.Document.State.Plugins["example"].Version != "1.2.0" {
				got := cur.Document.State.Plugins["example"].Version
				t.Fatalf("a warning kept the write from happening: %q", got)
			}

			// One host, one platform: singular.
			res, err = e.svc.Set(c, SetRequest{Scope: api.Scope{Kind: api.ScopeHost, Host: "c-arm-1"}, Plugin: "example", Version: "1.2.0", Author: "op"})
			if err != nil || len(res.Warnings) != 1 || !strings.HasPrefix(res.Warnings[0], "1 host in scope host:c-arm-1 runs linux/arm64, which example 1.2.0 is not published for; it will") {
				t.Fatalf("host scope: %q %v", res.Warnings, err)
			}
			// An old agent's platform is unknown: no warning, even strict.
			res, err = e.svc.Set(c, SetRequest{Scope: api.Scope{Kind: api.ScopeHost, Host: "p-old"}, Plugin: "example", Version: "1.2.0", Author: "op", RequirePlatforms: true})
			if err != nil || len(res.Warnings) != 0 || res.HostPlatforms["unknown"] != 1 {
				t.Fatalf("old agent: %+v %v", res, err)
			}

			// Strict: refused, and the fleet document is not written.
			before := e.scopeRevision(t, fleet)
			_, err = e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: "1.2.0", Author: "admin", RequirePlatforms: true})
			if !errors.Is(err, ErrUnpublishedPlatform) || !errors.Is(err, ErrInvalid) ||
				!strings.Contains(err.Error(), "3 hosts in scope fleet run linux/arm64, which example 1.2.0 is not published for") {
				t.Fatalf("strict set: %v", err)
			}
			if after := e.scopeRevision(t, fleet); after != before {
				t.Fatalf("refused set wrote the fleet document (revision %d -> %d)", before, after)
			}

			// Published for arm64 too: no warning, strict or not.
			e.publishArm64(t, "example", "1.2.0")
			res, err = e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: "1.2.0", Author: "admin", RequirePlatforms: true})
			if err != nil || len(res.Warnings) != 0 || strings.Join(res.Platforms, " ") != "linux/amd64 linux/arm64" {
				t.Fatalf("set with both platforms published: %+v %v", res, err)
			}
			if w := map[string]int64{"linux/amd64": 4, "linux/arm64": 3, "unknown": 1}; !maps.Equal(res.HostPlatforms, w) {
				t.Fatalf("fleet host platforms %v, want %v", res.HostPlatforms, w)
			}
		})
	}
}

// TestPercentWarnsOnlyAboutItsHosts: with a percentage, only the hosts
// whose stable bucket is inside it are counted.
func TestPercentWarnsOnlyAboutItsHosts(t *testing.T) {
	e := newEnv(t, true)
	c := ctx(t)
	var arm []string
	for i := range 40 {
		r := api.Registration{Host: fmt.Sprintf("h-%02d", i), OS: "linux", Arch: "amd64"}
		if i%2 == 1 {
			r.Arch = "arm64"
			arm = append(arm, r.Host)
		}
		putRegistration(t, e, r)
	}
	fleet := api.Scope{Kind: api.ScopeFleet}
	e.publish(t, "example", "1.0.0")
	e.publishArm64(t, "example", "1.0.0")
	if res, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: "1.0.0", Author: "admin"}); err != nil || len(res.Warnings) != 0 {
		t.Fatalf("baseline: %+v %v", res, err)
	}
	e.publish(t, "example", "1.1.0")
	in := 0
	for _, h := range arm {
		if api.RolloutBucket(h, "example") < 30 {
			in++
		}
	}
	if in == 0 || in == len(arm) {
		t.Fatalf("test hosts: %d of %d arm64 hosts in a 30%% rollout; pick other names", in, len(arm))
	}
	res, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: "1.1.0", Percent: 30, Author: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%d hosts in the 30%% rollout of scope fleet run linux/arm64, which example 1.1.0 is not published for", in)
	if in == 1 {
		want = "1 host in the 30% rollout of scope fleet runs linux/arm64, which example 1.1.0 is not published for"
	}
	if len(res.Warnings) != 1 || !strings.HasPrefix(res.Warnings[0], want) || res.HostPlatforms["linux/arm64"] != int64(in) {
		t.Fatalf("warnings %q (hosts %v), want %q", res.Warnings, res.HostPlatforms, want)
	}
}

// TestUndoChecksPlatforms: an undo whose version (here its signed
// rollback release) is published for amd64 only warns about the arm64
// hosts, and is refused with RequirePlatforms, writing nothing.
func TestUndoChecksPlatforms(t *testing.T) {
	e := newEnv(t, true)
	c := ctx(t)
	platformFleet(t, e)
	fleet := api.Scope{Kind: api.ScopeFleet}
	e.publish(t, "example", "1.2.0")
	if res, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: "1.2.0", Author: "admin"}); err != nil || len(res.Warnings) != 1 {
		t.Fatalf("set 1.2.0: %+v %v", res, err)
	}
	e.publish(t, "example", "1.3.0")
	e.publishArm64(t, "example", "1.3.0")
	if res, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: "1.3.0", Author: "admin"}); err != nil || len(res.Warnings) != 0 {
		t.Fatalf("set 1.3.0: %+v %v", res, err)
	}
	e.publishRollback(t, "example", "1.2.0", "1.2.0+rollback.1")

	before := e.scopeRevision(t, fleet)
	_, err := e.svc.UndoWith(c, UndoRequest{Scope: fleet, Plugin: "example", Author: "admin", RequirePlatforms: true})
	if !errors.Is(err, ErrUnpublishedPlatform) || !strings.Contains(err.Error(), "3 hosts in scope fleet run linux/arm64, which example 1.2.0+rollback.1 is not published for") {
		t.Fatalf("strict undo: %v", err)
	}
	if after := e.scopeRevision(t, fleet); after != before {
		t.Fatalf("refused undo wrote the fleet document (revision %d -> %d)", before, after)
	}
	res, err := e.svc.Undo(c, fleet, "example", "admin", "")
	if err != nil || res.Version != "1.2.0+rollback.1" || len(res.Warnings) != 1 || !strings.HasPrefix(res.Warnings[0], "3 hosts in scope fleet run linux/arm64") {
		t.Fatalf("undo: %+v %v", res, err)
	}
}
