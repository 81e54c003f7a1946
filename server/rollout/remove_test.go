package rollout

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/artifacts"
	"github.com/vigil-hids/vigil/server/store"
	"github.com/vigil-hids/vigil/signing"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// setDoc writes scope's desired state as an operator would.
func (e *env) setDoc(t *testing.T, scope api.Scope, st api.DesiredState) {
	t.Helper()
	if _, err := e.st.Set(ctx(t), store.Write{Scope: scope, State: st, Author: "op", Comment: "test"}); err != nil {
		t.Fatal(err)
	}
}

func plugin(version string, ro *api.Rollout) api.DesiredState {
	return api.DesiredState{Plugins: map[string]api.PluginState{"procmon": {Version: version, Rollout: ro}}}
}

func TestRemoveRefusedWhileAskedFor(t *testing.T) {
	e := newEnv(t, false)
	c := ctx(t)
	amd, amdRaw := manifestFor(t, "procmon", "1.3.0", "linux", "amd64", []byte("procmon 1.3.0 amd64"), "k1")
	arm, armRaw := manifestFor(t, "procmon", "1.3.0", "linux", "arm64", []byte("procmon 1.3.0 arm64"), "k1")
	for _, p := range []struct {
		sm  signing.SignedManifest
		raw []byte
	}{{amd, amdRaw}, {arm, armRaw}} {
		if _, err := e.svc.Publish(c, p.raw, p.sm); err != nil {
			t.Fatal(err)
		}
	}
	e.publish(t, "procmon", "1.4.0")
	fleet := api.Scope{Kind: api.ScopeFleet}
	canary := api.Scope{Kind: api.ScopeGroup, Label: "env", Value: "canary"}
	h1 := api.Scope{Kind: api.ScopeHost, Host: "h1"}
	rm := RemoveRequest{Plugin: "procmon", Version: "1.3.0", Author: "admin-alice", Comment: "CVE in 1.3.0"}

	steps := []struct {
		name string
		set  func()
		want string // a scope the refusal names; "" means the removal succeeds
	}{
		{"fleet version", func() { e.setDoc(t, fleet, plugin("1.3.0", nil)) }, "fleet (version)"},
		{"group rollout from", func() {
			e.setDoc(t, fleet, plugin("1.4.0", nil))
			e.setDoc(t, canary, plugin("1.4.0", &api.Rollout{Percent: 5, From: "1.3.0"}))
		}, "group:env=canary (rollout from)"},
		{"host version", func() {
			e.setDoc(t, canary, plugin("1.4.0", nil))
			e.setDoc(t, h1, plugin("1.3.0", nil))
		}, "host:h1 (version)"},
	}
	for _, s := range steps {
		s.set()
		_, err := e.svc.Remove(c, rm)
		if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), s.want) || strings.Count(err.Error(), "(version")+
			strings.Count(err.Error(), "(rollout") != 1 {
			t.Fatalf("%s: want ErrInUse naming only %q, got %v", s.name, s.want, err)
		}
		if ms, err := e.svc.Manifests(c, "procmon", "1.3.0"); err != nil || len(ms) != 2 {
			t.Fatalf("%s: a refused removal removed manifests: %v %v", s.name, ms, err)
		}
	}
	if _, err := e.svc.Remove(c, RemoveRequest{Plugin: "procmon", Version: "1.3.0", Author: "a"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("no comment: %v", err)
	}

	// Moved off: one platform first, then the rest.
	e.setDoc(t, h1, api.DesiredState{})
	got, err := e.svc.Remove(c, RemoveRequest{Plugin: "procmon", Version: "1.3.0", OS: "linux", Arch: "arm64", Author: "admin-alice", Comment: "bad arm64 build"})
	if err != nil || len(got) != 1 || got[0].Arch != "arm64" || got[0].SHA256 != arm.Manifest.SHA256 || !bytes.Equal(got[0].Manifest, armRaw) {
		t.Fatalf("remove arm64: %+v %v", got, err)
	}
	if _, err := e.svc.Remove(c, RemoveRequest{Plugin: "procmon", Version: "1.3.0", OS: "linux", Arch: "arm64", Comment: "again"}); !errors.Is(err, ErrNoRelease) ||
		!strings.Contains(err.Error(), "published for: linux/amd64") {
		t.Fatalf("remove arm64 again: %v", err)
	}
	if _, err := e.svc.Remove(c, rm); err != nil {
		t.Fatal(err)
	}
	rs, err := e.svc.Releases(c, "procmon")
	if err != nil || len(rs) != 1 || rs[0].Version != "1.4.0" {
		t.Fatalf("release ls after rm: %+v %v", rs, err)
	}
	recs, err := e.svc.Removed(c, "procmon")
	if err != nil || len(recs) != 2 {
		t.Fatalf("removed: %+v %v", recs, err)
	}
	for i, want := range []struct {
		arch, comment string
		raw           []byte
	}{{"amd64", "CVE in 1.3.0", amdRaw}, {"arm64", "bad arm64 build", armRaw}} {
		r := recs[i]
		if r.Arch != want.arch || r.RemovedBy != "admin-alice" || r.Comment != want.comment || !bytes.Equal(r.Manifest, want.raw) ||
			r.RemovedAt.IsZero() || r.Revision == 0 {
			t.Fatalf("record %d: %+v", i, r)
		}
	}
	// Hosts' prefix holds no trace of the record.
	resp, err := e.cli.Get(c, e.ks.Releases()+"procmon/1.3.0/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("keys left under the hosts' prefix: %v %v", resp, err)
	}

	// Another binary under the removed version is refused; the removed
	// manifest (even with another signature) restores it.
	other, otherRaw := manifestFor(t, "procmon", "1.3.0", "linux", "amd64", []byte("another 1.3.0"), "k1")
	for name, f := range map[string]func() error{
		"CanPublish": func() error { return e.svc.CanPublish(c, otherRaw, other) },
		"Publish":    func() error { _, err := e.svc.Publish(c, otherRaw, other); return err },
	} {
		if err := f(); !errors.Is(err, ErrReleaseExists) || !strings.Contains(err.Error(), "removed by admin-alice") ||
			!strings.Contains(err.Error(), amd.Manifest.SHA256) {
			t.Fatalf("%s of other bytes under a removed version: %v", name, err)
		}
	}
	_, sec, _ := signing.GenerateKey(nil)
	more := amd
	more.Signatures = append([]signing.Signature(nil), amd.Signatures...)
	if err := more.Sign(sec); err != nil {
		t.Fatal(err)
	}
	moreRaw, _ := more.Marshal()
	if err := e.svc.CanPublish(c, moreRaw, more); err != nil {
		t.Fatalf("CanPublish of the removed manifest: %v", err)
	}
	if r, err := e.svc.Publish(c, moreRaw, more); err != nil || r.Result != "restored" {
		t.Fatalf("restore: %+v %v", r, err)
	}
	if recs, err := e.svc.Removed(c, "procmon"); err != nil || len(recs) != 1 || recs[0].Arch != "arm64" {
		t.Fatalf("records after restoring amd64: %+v %v", recs, err)
	}
	if got, err := e.svc.Manifest(c, "procmon", "1.3.0", "linux", "amd64"); err != nil || !bytes.Equal(got, moreRaw) {
		t.Fatalf("restored manifest: %v", err)
	}
}

func TestRemoveHostRelease(t *testing.T) {
	e := newEnv(t, false)
	c := ctx(t)
	e.publish(t, api.HostReleaseName, "2.0.0")
	e.publish(t, api.HostReleaseName, "2.1.0")
	fleet := api.Scope{Kind: api.ScopeFleet}
	e.setDoc(t, fleet, api.DesiredState{HostVersion: "2.1.0", HostRollout: &api.Rollout{Percent: 10, From: "2.0.0"}})
	rm := RemoveRequest{Plugin: api.HostReleaseName, Version: "2.0.0", Author: "a", Comment: "old"}
	if _, err := e.svc.Remove(c, rm); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "fleet (rollout from)") {
		t.Fatalf("vigil-host from: %v", err)
	}
	e.setDoc(t, fleet, api.DesiredState{HostVersion: "2.1.0"})
	if _, err := e.svc.Remove(c, rm); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Remove(c, RemoveRequest{Plugin: api.HostReleaseName, Version: "2.1.0", Author: "a", Comment: "x"}); !errors.Is(err, ErrInUse) {
		t.Fatalf("vigil-host version: %v", err)
	}
}

func TestRemoveConcurrentOneWins(t *testing.T) {
	e := newEnv(t, false)
	c := ctx(t)
	e.publish(t, "procmon", "1.3.0")
	const n = 6
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = e.svc.Remove(c, RemoveRequest{Plugin: "procmon", Version: "1.3.0", Author: "a", Comment: "race"})
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrNoRelease):
			t.Fatalf("a losing removal: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d removals won, want 1: %v", won, errs)
	}
	if recs, err := e.svc.Removed(c, ""); err != nil || len(recs) != 1 {
		t.Fatalf("records: %+v %v", recs, err)
	}
}

// publishStored publishes bin as plugin version (artifact first, as the server
// does) and returns its sha256.
func (e *env) publishStored(t *testing.T, arts *artifacts.Store, plugin, version string, bin []byte) string {
	t.Helper()
	sm, raw := manifest(t, plugin, version, bin, "k1")
	if _, err := arts.Put(bytes.NewReader(bin), sm.Manifest.SHA256, sm.Manifest.Length); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Publish(ctx(t), raw, sm); err != nil {
		t.Fatal(err)
	}
	return sm.Manifest.SHA256
}

// orphan stores bin without a manifest, last modified age ago.
func orphan(t *testing.T, arts *artifacts.Store, bin []byte, age time.Duration) string {
	t.Helper()
	sm, _ := manifest(t, "x", "0.0.1", bin)
	if _, err := arts.Put(bytes.NewReader(bin), sm.Manifest.SHA256, sm.Manifest.Length); err != nil {
		t.Fatal(err)
	}
	age0(t, arts, sm.Manifest.SHA256, age)
	return sm.Manifest.SHA256
}

func age0(t *testing.T, arts *artifacts.Store, sha string, age time.Duration) {
	t.Helper()
	then := time.Now().Add(-age)
	if err := os.Chtimes(arts.Path(sha), then, then); err != nil {
		t.Fatal(err)
	}
}

func exists(arts *artifacts.Store, sha string) bool {
	_, err := arts.Stat(sha)
	return err == nil
}

func TestCollectArtifacts(t *testing.T) {
	e := newEnv(t, false)
	c := ctx(t)
	arts, err := artifacts.Open(artifacts.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	named := e.publishStored(t, arts, "procmon", "1.2.0", []byte("procmon 1.2.0"))
	age0(t, arts, named, 48*time.Hour) // old, but named
	removed := e.publishStored(t, arts, "procmon", "1.1.0", []byte("procmon 1.1.0"))
	age0(t, arts, removed, 48*time.Hour)
	old := orphan(t, arts, []byte("an interrupted publish, long ago"), 2*time.Hour)
	young := orphan(t, arts, []byte("a publish in flight"), time.Minute)

	if _, err := e.svc.CollectArtifacts(c, arts, time.Second, false); !errors.Is(err, ErrInvalid) {
		t.Fatalf("grace of 1s: %v", err)
	}
	dry, err := e.svc.CollectArtifacts(c, arts, 0, true)
	if err != nil || !dry.DryRun || len(dry.Removed) != 1 || dry.Removed[0].SHA256 != old || len(dry.Young) != 1 ||
		dry.Young[0].SHA256 != young || dry.Named != 2 || dry.BytesFreed != int64(len("an interrupted publish, long ago")) {
		t.Fatalf("dry run: %+v %v", dry, err)
	}
	for _, sha := range []string{named, removed, old, young} {
		if !exists(arts, sha) {
			t.Fatalf("dry run removed %s", sha)
		}
	}

	// Removing the 1.1.0 release lets its artifact go too.
	if _, err := e.svc.Remove(c, RemoveRequest{Plugin: "procmon", Version: "1.1.0", Author: "a", Comment: "compromised"}); err != nil {
		t.Fatal(err)
	}
	rep, err := e.svc.CollectArtifacts(c, arts, time.Hour, false)
	if err != nil || rep.DryRun || len(rep.Removed) != 2 || len(rep.Young) != 1 || rep.Named != 1 ||
		rep.BytesFreed != int64(len("an interrupted publish, long ago")+len("procmon 1.1.0")) {
		t.Fatalf("gc: %+v %v", rep, err)
	}
	for sha, want := range map[string]bool{named: true, young: true, old: false, removed: false} {
		if exists(arts, sha) != want {
			t.Fatalf("after gc, %s exists=%v, want %v", sha, !want, want)
		}
	}

	// An old orphan that a publish reuses is renewed, so a gc between
	// storing it and writing the manifest keeps it.
	reused := orphan(t, arts, []byte("procmon 1.5.0"), 3*time.Hour)
	sm, raw := manifest(t, "procmon", "1.5.0", []byte("procmon 1.5.0"), "k1")
	if in, err := arts.Put(bytes.NewReader([]byte("procmon 1.5.0")), sm.Manifest.SHA256, sm.Manifest.Length); err != nil || in.Created {
		t.Fatalf("reuse: %+v %v", in, err)
	}
	if rep, err := e.svc.CollectArtifacts(c, arts, time.Hour, false); err != nil || len(rep.Removed) != 0 || !exists(arts, reused) {
		t.Fatalf("gc during a publish of a stored artifact: %+v %v", rep, err)
	}
	if _, err := e.svc.Publish(c, raw, sm); err != nil {
		t.Fatal(err)
	}
}
