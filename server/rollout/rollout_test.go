package rollout

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server/registry"
	"github.com/vigil-hids/vigil/server/store"
	"github.com/vigil-hids/vigil/signing"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreCurrent()) }

type env struct {
	cli *clientv3.Client
	st  *store.Store
	x   *registry.Index
	svc *Service
	ks  api.Keyspace
}

func newEnv(t *testing.T, withIndex bool) *env {
	t.Helper()
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	ks := api.NewKeyspace("")
	var x *registry.Index
	if withIndex {
		x = registry.Start(cli, ks, nil)
		t.Cleanup(x.Close)
	}
	st := store.New(cli, store.Options{Keyspace: ks, Validate: catalog.Validate, Index: x})
	return &env{cli: cli, st: st, x: x, svc: New(Options{Store: st, Index: x}), ks: ks}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// manifest signs a linux/amd64 manifest of bin for plugin and version
// with each key.
func manifest(t *testing.T, plugin, version string, bin []byte, keys ...string) (signing.SignedManifest, []byte) {
	t.Helper()
	return manifestFor(t, plugin, version, "linux", "amd64", bin, keys...)
}

// manifestFor is manifest for another platform.
func manifestFor(t *testing.T, plugin, version, goos, arch string, bin []byte, keys ...string) (signing.SignedManifest, []byte) {
	t.Helper()
	sum := sha256.Sum256(bin)
	sm := signing.SignedManifest{Manifest: signing.Manifest{Plugin: plugin, Version: version, OS: goos, Arch: arch,
		Length: int64(len(bin)), SHA256: hex.EncodeToString(sum[:]), Expires: time.Now().Add(time.Hour), MinHostVersion: "0.1.0"},
		Signatures: []signing.Signature{}}
	for range keys {
		_, sec, err := signing.GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := sm.Sign(sec); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := sm.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return sm, raw
}

func (e *env) publish(t *testing.T, plugin, version string) {
	t.Helper()
	sm, raw := manifest(t, plugin, version, []byte(plugin+version), "k1")
	if _, err := e.svc.Publish(ctx(t), raw, sm); err != nil {
		t.Fatal(err)
	}
}

func TestPublishWritesTheSignedBytesOnce(t *testing.T) {
	e := newEnv(t, false)
	c := ctx(t)
	sm, raw := manifest(t, "procmon", "1.2.0", []byte("binary"), "k1")
	r, err := e.svc.Publish(c, raw, sm)
	if err != nil || r.Result != "created" || len(r.Signers) != 1 {
		t.Fatalf("publish: %+v %v", r, err)
	}
	got, err := e.svc.Manifest(c, "procmon", "1.2.0", "linux", "amd64")
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("stored manifest differs from the signed bytes: %v\n%s", err, got)
	}
	if r, err := e.svc.Publish(c, raw, sm); err != nil || r.Result != "unchanged" {
		t.Fatalf("same bytes again: %+v %v", r, err)
	}
	// The same manifest signed by one more key replaces it.
	_, sec, _ := signing.GenerateKey(nil)
	more := sm
	more.Signatures = append([]signing.Signature(nil), sm.Signatures...)
	if err := more.Sign(sec); err != nil {
		t.Fatal(err)
	}
	moreRaw, _ := more.Marshal()
	if r, err := e.svc.Publish(c, moreRaw, more); err != nil || r.Result != "updated" || len(r.Signers) != 2 {
		t.Fatalf("more signatures: %+v %v", r, err)
	}
	// Dropping a signature again is refused.
	if _, err := e.svc.Publish(c, raw, sm); !errors.Is(err, ErrReleaseExists) || !strings.Contains(err.Error(), "signatures are only ever added") {
		t.Fatalf("fewer signatures: %v", err)
	}
	// Another binary under the same version is refused, before and at
	// the write.
	other, otherRaw := manifest(t, "procmon", "1.2.0", []byte("other binary"), "k1")
	if err := e.svc.CanPublish(c, otherRaw, other); !errors.Is(err, ErrReleaseExists) || !strings.Contains(err.Error(), "publish a new version") {
		t.Fatalf("CanPublish of another binary: %v", err)
	}
	if _, err := e.svc.Publish(c, otherRaw, other); !errors.Is(err, ErrReleaseExists) {
		t.Fatalf("Publish of another binary: %v", err)
	}
	if got, _ := e.svc.Manifest(c, "procmon", "1.2.0", "linux", "amd64"); !bytes.Equal(got, moreRaw) {
		t.Fatal("a refused publish changed the stored manifest")
	}
	if _, err := e.svc.Manifest(c, "procmon", "9.9.9", "linux", "amd64"); !errors.Is(err, ErrNoRelease) {
		t.Fatalf("missing manifest: %v", err)
	}
}

func TestReleasesSortBySemver(t *testing.T) {
	e := newEnv(t, false)
	for _, v := range []string{"1.10.0", "1.2.0", "1.9.1"} {
		e.publish(t, "procmon", v)
	}
	e.publish(t, api.HostReleaseName, "0.5.0")
	rs, err := e.svc.Releases(ctx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs {
		got = append(got, r.Plugin+"@"+r.Version)
	}
	if want := "procmon@1.2.0 procmon@1.9.1 procmon@1.10.0 vigil-host@0.5.0"; strings.Join(got, " ") != want {
		t.Fatalf("releases = %v, want %s", got, want)
	}
	if rs, err := e.svc.Releases(ctx(t), "procmon"); err != nil || len(rs) != 3 {
		t.Fatalf("releases of procmon: %d %v", len(rs), err)
	}
	if _, err := e.svc.Releases(ctx(t), "../x"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad plugin name: %v", err)
	}
}

func TestSetAndUndoWriteHistory(t *testing.T) {
	e := newEnv(t, false)
	c := ctx(t)
	fleet := api.Scope{Kind: api.ScopeFleet}
	canary := api.Scope{Kind: api.ScopeGroup, Label: "env", Value: "canary"}
	on := true
	// The fleet document has more in it than versions: set and undo keep it.
	if _, err := e.st.Set(c, store.Write{Scope: fleet, Author: "alice", State: api.DesiredState{LogLevel: "info",
		Plugins: map[string]api.PluginState{"example": {Enabled: &on}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: "1.0.0", Author: "alice"}); !errors.Is(err, ErrNoRelease) {
		t.Fatalf("unpublished version: %v", err)
	}
	for _, v := range []string{"1.0.0", "1.1.0"} {
		e.publish(t, "example", v)
	}
	e.publish(t, api.HostReleaseName, "2.0.0")
	bad := []struct {
		req  SetRequest
		want string
	}{
		{SetRequest{Scope: fleet, Plugin: "example", Version: "latest"}, `version must be semver MAJOR.MINOR.PATCH (got "latest")`},
		{SetRequest{Scope: fleet, Plugin: "example", Version: "1.0.0", Percent: 101}, "percent must be between 1 and 100 (got 101)"},
		{SetRequest{Scope: fleet, Plugin: "a/b", Version: "1.0.0"}, `"a/b" is not a plugin name`},
	}
	for _, b := range bad {
		if _, err := e.svc.Set(c, b.req); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), b.want) {
			t.Fatalf("Set(%+v) = %v, want %q", b.req, err, b.want)
		}
	}
	res, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: "1.0.0", Author: "alice", Comment: "baseline"})
	if err != nil || res.Rollout != nil || res.Seq != 2 {
		t.Fatalf("set 1.0.0: %+v %v", res, err)
	}
	// A canary of 1.1.0 on 10% of the fleet: the others stay on 1.0.0.
	res, err = e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: "1.1.0", Percent: 10, Author: "bob"})
	if err != nil || *res.Rollout != (api.Rollout{Percent: 10, From: "1.0.0"}) {
		t.Fatalf("canary: %+v %v", res, err)
	}
	// Raising the percentage keeps From.
	res, err = e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: "1.1.0", Percent: 50, Author: "bob"})
	if err != nil || *res.Rollout != (api.Rollout{Percent: 50, From: "1.0.0"}) || res.Previous != "1.1.0" {
		t.Fatalf("raise: %+v %v", res, err)
	}
	// A group's canary starts from what the fleet asks of its hosts.
	// (A lower percentage than the fleet's would move hosts back to 1.0.0,
	// which needs a rollback release: TestDowngradesNeedRollbackReleases.)
	res, err = e.svc.Set(c, SetRequest{Scope: canary, Plugin: "example", Version: "1.1.0", Percent: 60, Author: "bob"})
	if err != nil || *res.Rollout != (api.Rollout{Percent: 60, From: "1.0.0"}) {
		t.Fatalf("group canary: %+v %v", res, err)
	}
	if _, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: api.HostReleaseName, Version: "2.0.0", Percent: 5, Author: "bob"}); err != nil {
		t.Fatal(err)
	}
	cur, _ := e.st.Get(c, fleet)
	st := cur.Document.State
	if st.HostVersion != "2.0.0" || st.HostRollout == nil || st.HostRollout.Percent != 5 || st.HostRollout.From != "" {
		t.Fatalf("host version: %+v %+v", st.HostVersion, st.HostRollout)
	}
	if st.LogLevel != "info" || st.Plugins["example"].Enabled == nil || st.Plugins["example"].Version != "1.1.0" {
		t.Fatalf("set lost the rest of the document: %+v", st)
	}
	// Undo steps back one rollout step of this plugin only; it moves hosts
	// back to 1.0.0, which needs a signed rollback release of 1.0.0.
	if _, err := e.svc.Undo(c, fleet, "example", "carol", ""); !errors.Is(err, ErrNeedsRollback) {
		t.Fatalf("undo without a rollback release: %v", err)
	}
	e.publishRollback(t, "example", "1.0.0", "1.0.0+rollback.1")
	res, err = e.svc.Undo(c, fleet, "example", "carol", "too many crashes")
	if err != nil || res.Version != "1.1.0" || *res.Rollout != (api.Rollout{Percent: 10, From: "1.0.0+rollback.1"}) ||
		!strings.Contains(res.Comment, "rollout undo example: 1.1.0 on 50% (others 1.0.0) -> 1.1.0 on 10% (others 1.0.0+rollback.1) (as of seq 3) (1.0.0 as its signed rollback release 1.0.0+rollback.1): too many crashes") {
		t.Fatalf("undo: %+v %v", res, err)
	}
	cur, _ = e.st.Get(c, fleet)
	if cur.Document.State.HostVersion != "2.0.0" || cur.Document.Author != "carol" {
		t.Fatalf("undo changed more than the plugin: %+v", cur.Document)
	}
	hist, err := e.st.History(c, fleet, 0)
	if err != nil || len(hist) != 6 {
		t.Fatalf("history: %d records, %v", len(hist), err)
	}
	// Undoing the version itself, then past the first version, removes
	// the version but keeps the plugin's other settings.
	if _, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: "1.1.0", Author: "bob"}); err != nil {
		t.Fatal(err)
	}
	if res, err = e.svc.Undo(c, fleet, "example", "carol", ""); err != nil || res.Version != "1.1.0" || res.Rollout.Percent != 10 {
		t.Fatalf("undo to 10%%: %+v %v", res, err)
	}
	if _, err := e.svc.Undo(c, canary, "example", "carol", ""); err != nil {
		t.Fatalf("undo of the group's only rollout: %v", err)
	}
	gcur, _ := e.st.Get(c, canary)
	if _, ok := gcur.Document.State.Plugins["example"]; ok {
		t.Fatalf("undo past the first version left an entry: %+v", gcur.Document.State)
	}
	if _, err := e.svc.Undo(c, api.Scope{Kind: api.ScopeHost, Host: "h"}, "example", "carol", ""); !errors.Is(err, ErrNothingToUndo) {
		t.Fatalf("undo without history: %v", err)
	}
}

// TestPercentPicksHostsStably checks what the hosts derive from a rollout
// written by Set: the share is about the percentage, and raising it only
// adds hosts.
func TestPercentPicksHostsStably(t *testing.T) {
	e := newEnv(t, false)
	c := ctx(t)
	fleet := api.Scope{Kind: api.ScopeFleet}
	e.publish(t, "example", "1.0.0")
	e.publish(t, "example", "1.1.0")
	if _, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: "1.0.0", Author: "a"}); err != nil {
		t.Fatal(err)
	}
	prev := map[string]bool{}
	for _, pct := range []int{1, 10, 50, 100} {
		if _, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "example", Version: "1.1.0", Percent: pct, Author: "a"}); err != nil {
			t.Fatal(err)
		}
		eff, err := e.st.Effective(c, "web-0")
		if err != nil {
			t.Fatal(err)
		}
		ps := eff.State.Plugins["example"]
		n := 0
		for i := 0; i < 2000; i++ {
			host := fmt.Sprintf("web-%d", i)
			switch api.TargetVersion(host, "example", ps.Version, ps.Rollout) {
			case "1.1.0":
				n++
				prev[host] = true
			case "1.0.0":
				if prev[host] {
					t.Fatalf("%s left 1.1.0 when the rollout went to %d%%", host, pct)
				}
			default:
				t.Fatalf("unexpected target for %s", host)
			}
		}
		if lo, hi := 2000*pct/100-60, 2000*pct/100+60; n < lo || n > hi {
			t.Fatalf("%d%% picked %d of 2000 hosts", pct, n)
		}
	}
}

func putRegistration(t *testing.T, e *env, r api.Registration) {
	t.Helper()
	b, _ := json.Marshal(r)
	if _, err := e.cli.Put(ctx(t), e.ks.Agent(r.Host), string(b)); err != nil {
		t.Fatal(err)
	}
}

func TestStatusAggregatesRegistrations(t *testing.T) {
	for _, withIndex := range []bool{true, false} {
		t.Run(fmt.Sprintf("index=%v", withIndex), func(t *testing.T) {
			e := newEnv(t, withIndex)
			upd := func(target, state, msg string) *api.UpdateStatus {
				return &api.UpdateStatus{Target: target, State: state, Error: msg, At: time.Now()}
			}
			prod := map[string]string{"env": "prod"}
			canary := map[string]string{"env": "canary"}
			regs := []api.Registration{
				{Host: "a", Labels: canary, Version: "0.9.0", Plugins: map[string]api.PluginStatus{"procmon": {Version: "1.1.0", Update: upd("1.1.0", api.UpdateInstalled, "")}}},
				{Host: "b", Labels: canary, Version: "0.9.0", Plugins: map[string]api.PluginStatus{"procmon": {Version: "1.0.0", Update: upd("1.1.0", api.UpdateRefused, "signing: bad signature")}}},
				{Host: "c", Labels: prod, Version: "0.9.0", Plugins: map[string]api.PluginStatus{"procmon": {Version: "1.0.0", Update: upd("1.1.0", api.UpdateRolledBack, "health gate: exited 3 times")}}},
				{Host: "d", Labels: prod, Version: "0.9.0", Plugins: map[string]api.PluginStatus{"procmon": {Version: "1.0.0"}}},
				{Host: "e", Labels: prod, Version: "1.0.0", HostUpdate: upd("1.0.0", api.UpdateInstalled, ""),
					Plugins: map[string]api.PluginStatus{"procmon": {Update: upd("1.1.0", api.UpdateDownloading, "")}}},
				{Host: "f", Labels: prod, Version: "0.9.0"},
			}
			for _, r := range regs {
				putRegistration(t, e, r)
			}
			e.publish(t, "procmon", "1.1.0")
			if _, err := e.svc.Set(ctx(t), SetRequest{Scope: api.Scope{Kind: api.ScopeFleet}, Plugin: "procmon", Version: "1.1.0", Author: "a"}); err != nil {
				t.Fatal(err)
			}
			st, err := e.svc.Status(ctx(t), "procmon", api.Scope{Kind: api.ScopeFleet})
			if err != nil {
				t.Fatal(err)
			}
			if st.Hosts != 6 || st.Reporting != 5 || st.FailureCount != 2 || st.Desired != "1.1.0" || st.Rollout != nil {
				t.Fatalf("status: %+v", st)
			}
			wantV := map[string]int64{"1.1.0": 1, "1.0.0": 3, "": 1}
			wantS := map[string]int64{api.UpdateInstalled: 1, api.UpdateRefused: 1, api.UpdateRolledBack: 1, NoState: 1, api.UpdateDownloading: 1}
			if fmt.Sprint(st.Versions) != fmt.Sprint(wantV) || fmt.Sprint(st.States) != fmt.Sprint(wantS) || st.Targets["1.1.0"] != 4 {
				t.Fatalf("versions %v states %v targets %v", st.Versions, st.States, st.Targets)
			}
			if len(st.Failures) != 2 || st.Failures[0] != (Failure{Host: "b", Running: "1.0.0", Target: "1.1.0", State: api.UpdateRefused, Error: "signing: bad signature"}) ||
				st.Failures[1].Host != "c" || st.Failures[1].Error != "health gate: exited 3 times" {
				t.Fatalf("failures: %+v", st.Failures)
			}
			st, err = e.svc.Status(ctx(t), "procmon", api.Scope{Kind: api.ScopeGroup, Label: "env", Value: "canary"})
			if err != nil || st.Hosts != 2 || st.FailureCount != 1 || st.Failures[0].Host != "b" {
				t.Fatalf("canary status: %+v %v", st, err)
			}
			st, err = e.svc.Status(ctx(t), api.HostReleaseName, api.Scope{Kind: api.ScopeFleet})
			if err != nil || st.Reporting != 6 || st.Versions["0.9.0"] != 5 || st.States[api.UpdateInstalled] != 1 || st.States[NoState] != 5 {
				t.Fatalf("host status: %+v %v", st, err)
			}
			st, err = e.svc.Status(ctx(t), "procmon", api.Scope{Kind: api.ScopeHost, Host: "c"})
			if err != nil || st.Hosts != 1 || st.FailureCount != 1 {
				t.Fatalf("host scope status: %+v %v", st, err)
			}

			// Each host's target from the documents that apply to it: the
			// fleet asks 1.1.0, which only a runs; a narrower group
			// document moves prod to 1.2.0; nothing asks for a vigil-host
			// version.
			st, err = e.svc.Status(ctx(t), "procmon", api.Scope{Kind: api.ScopeFleet})
			if err != nil || fmt.Sprint(st.Expected) != "map[1.1.0:6]" || st.OnTarget != 1 || st.Pending != 5 {
				t.Fatalf("expected %v on target %d pending %d (%v)", st.Expected, st.OnTarget, st.Pending, err)
			}
			e.publish(t, "procmon", "1.2.0")
			if _, err := e.svc.Set(ctx(t), SetRequest{Scope: api.Scope{Kind: api.ScopeGroup, Label: "env", Value: "prod"}, Plugin: "procmon", Version: "1.2.0", Author: "a"}); err != nil {
				t.Fatal(err)
			}
			st, err = e.svc.Status(ctx(t), "procmon", api.Scope{Kind: api.ScopeFleet})
			if err != nil || fmt.Sprint(st.Expected) != "map[1.1.0:2 1.2.0:4]" || st.OnTarget != 1 || st.Pending != 5 || st.Desired != "1.1.0" {
				t.Fatalf("after the group's 1.2.0: expected %v on target %d pending %d desired %s (%v)", st.Expected, st.OnTarget, st.Pending, st.Desired, err)
			}
			st, err = e.svc.Status(ctx(t), api.HostReleaseName, api.Scope{Kind: api.ScopeFleet})
			if err != nil || fmt.Sprint(st.Expected) != "map[:6]" || st.OnTarget != 0 || st.Pending != 0 {
				t.Fatalf("vigil-host: expected %v on target %d pending %d (%v)", st.Expected, st.OnTarget, st.Pending, err)
			}
		})
	}
}
