package rollout

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server/store"
	"github.com/vigil-hids/vigil/signing"
	clientv3 "go.etcd.io/etcd/client/v3"
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

// hookKV runs before once ahead of the first read of a key under prefix:
// a step of another writer, landed between two reads of one request.
type hookKV struct {
	clientv3.KV
	prefix string
	once   *sync.Once
	before func()
}

func (h hookKV) Get(c context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if strings.HasPrefix(key, h.prefix) {
		h.once.Do(h.before)
	}
	return h.KV.Get(c, key, opts...)
}

// TestRequirePlatformsSeesConcurrentRemoval: the arm64 manifest of a
// version is removed while rollout set (or undo) counts the hosts by
// platform. The platforms the write is guarded on are the ones read after
// the removal (amd64 only), so the arm64 hosts must be judged against
// those: refused with RequirePlatforms, as if the removal had come first.
func TestRequirePlatformsSeesConcurrentRemoval(t *testing.T) {
	fleet := api.Scope{Kind: api.ScopeFleet}
	for _, undo := range []bool{false, true} {
		t.Run(fmt.Sprintf("undo=%v", undo), func(t *testing.T) {
			e := newEnv(t, false)
			c := ctx(t)
			platformFleet(t, e)
			e.publish(t, "example", "1.2.0")
			e.publishArm64(t, "example", "1.2.0")
			e.publish(t, "example", "1.3.0")
			e.publishArm64(t, "example", "1.3.0")
			if undo {
				for _, v := range []string{"1.2.0", "1.3.0"} {
					if _, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: v, Author: "admin"}); err != nil {
						t.Fatal(err)
					}
				}
				// Undo goes back to 1.2.0: a signed rollback of it, for both platforms.
				e.publishRollback(t, "example", "1.2.0", "1.2.0+rollback.1")
				sm, _ := manifestFor(t, "example", "1.2.0+rollback.1", "linux", "arm64", []byte("example1.2.0 arm64"))
				sm.Manifest.Rollback = true
				_, sec, err := signing.GenerateKey(nil)
				if err != nil {
					t.Fatal(err)
				}
				if err := sm.Sign(sec); err != nil {
					t.Fatal(err)
				}
				raw, err := sm.Marshal()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := e.svc.Publish(c, raw, sm); err != nil {
					t.Fatal(err)
				}
			}
			version := "1.3.0"
			if undo {
				version = "1.2.0+rollback.1"
			}
			var rmErr error
			cli := etcdtest.NewClient(t, e.cli.Endpoints())
			cli.KV = hookKV{KV: cli.KV, prefix: e.ks.Agents(), once: &sync.Once{}, before: func() {
				_, rmErr = e.svc.Remove(c, RemoveRequest{Plugin: "example", Version: version, OS: "linux", Arch: "arm64", Author: "b", Comment: "pulled"})
			}}
			svc := New(Options{Store: store.New(cli, store.Options{Keyspace: e.ks, Validate: catalog.Validate})})
			before := e.scopeRevision(t, fleet)
			var res SetResult
			var err error
			if undo {
				res, err = svc.UndoWith(c, UndoRequest{Scope: fleet, Plugin: "example", Author: "admin", RequirePlatforms: true})
			} else {
				res, err = svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: version, Author: "admin", RequirePlatforms: true})
			}
			if rmErr != nil {
				t.Fatalf("removing the arm64 manifest: %v", rmErr)
			}
			if !errors.Is(err, ErrUnpublishedPlatform) || !strings.Contains(err.Error(), "linux/arm64, which example "+version+" is not published for") {
				t.Fatalf("with arm64 removed meanwhile: %+v, %v; want ErrUnpublishedPlatform", res, err)
			}
			if after := e.scopeRevision(t, fleet); after != before {
				t.Fatalf("refused write changed the fleet document (revision %d -> %d)", before, after)
			}
		})
	}
}
