package rollout

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/signing"
)

// TestOneVersionManyPlatforms publishes linux/amd64 and linux/arm64
// manifests of one version (different binaries): both are listed, each is
// stored byte for byte at its own key, the same-bytes and conflict rules
// hold per platform, and a rollout names both platforms.
func TestOneVersionManyPlatforms(t *testing.T) {
	e := newEnv(t, false)
	c := ctx(t)
	amd, amdRaw := manifestFor(t, "procmon", "1.2.0", "linux", "amd64", []byte("amd64 binary"), "k1")
	arm, armRaw := manifestFor(t, "procmon", "1.2.0", "linux", "arm64", []byte("arm64 binary"), "k1")
	if r, err := e.svc.Publish(c, amdRaw, amd); err != nil || r.Result != "created" {
		t.Fatalf("publish amd64: %+v %v", r, err)
	}
	// A fleet rollout is accepted with one platform and says which one.
	fleet := api.Scope{Kind: api.ScopeFleet}
	res, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "procmon", Version: "1.2.0", Author: "a"})
	if err != nil || strings.Join(res.Platforms, " ") != "linux/amd64" {
		t.Fatalf("set with amd64 only: %+v %v", res, err)
	}
	if _, err := e.svc.Manifest(c, "procmon", "1.2.0", "linux", "arm64"); !errors.Is(err, ErrNoRelease) ||
		!strings.Contains(err.Error(), "/hids/releases/procmon/1.2.0/linux/arm64") || !strings.Contains(err.Error(), "published for: linux/amd64") {
		t.Fatalf("missing arm64 manifest: %v", err)
	}
	// The second platform of a published version is a normal publish.
	if err := e.svc.CanPublish(c, armRaw, arm); err != nil {
		t.Fatalf("CanPublish arm64: %v", err)
	}
	if r, err := e.svc.Publish(c, armRaw, arm); err != nil || r.Result != "created" || r.Arch != "arm64" {
		t.Fatalf("publish arm64: %+v %v", r, err)
	}
	for _, p := range []struct {
		arch string
		raw  []byte
	}{{"amd64", amdRaw}, {"arm64", armRaw}} {
		got, err := e.svc.Manifest(c, "procmon", "1.2.0", "linux", p.arch)
		if err != nil || !bytes.Equal(got, p.raw) {
			t.Fatalf("linux/%s manifest: %v\n%s", p.arch, err, got)
		}
		resp, err := e.cli.Get(c, e.ks.Release("procmon", "1.2.0", "linux", p.arch))
		if err != nil || len(resp.Kvs) != 1 || !bytes.Equal(resp.Kvs[0].Value, p.raw) {
			t.Fatalf("key of linux/%s: %v %v", p.arch, resp, err)
		}
	}
	// One build signed for another platform of the same version is
	// refused (a courtesy: it would fail to start on those hosts).
	same, sameRaw := manifestFor(t, "procmon", "1.2.0", "linux", "riscv64", []byte("arm64 binary"), "k1")
	if err := e.svc.CanPublish(c, sameRaw, same); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "which its linux/arm64 manifest names too") {
		t.Fatalf("CanPublish of another platform's binary: %v", err)
	}
	if _, err := e.svc.Publish(c, sameRaw, same); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Publish of another platform's binary: %v", err)
	}
	// Same bytes again: unchanged, per platform.
	if r, err := e.svc.Publish(c, armRaw, arm); err != nil || r.Result != "unchanged" {
		t.Fatalf("arm64 again: %+v %v", r, err)
	}
	// Another arm64 binary under 1.2.0 is refused; amd64 stays.
	other, otherRaw := manifestFor(t, "procmon", "1.2.0", "linux", "arm64", []byte("another arm64 binary"), "k1")
	if _, err := e.svc.Publish(c, otherRaw, other); !errors.Is(err, ErrReleaseExists) || !strings.Contains(err.Error(), "procmon 1.2.0 for linux/arm64") {
		t.Fatalf("conflicting arm64 manifest: %v", err)
	}
	if got, _ := e.svc.Manifest(c, "procmon", "1.2.0", "linux", "arm64"); !bytes.Equal(got, armRaw) {
		t.Fatal("a refused publish changed the arm64 manifest")
	}
	if got, _ := e.svc.Manifest(c, "procmon", "1.2.0", "linux", "amd64"); !bytes.Equal(got, amdRaw) {
		t.Fatal("a refused arm64 publish changed the amd64 manifest")
	}
	// One row per platform, by version then platform.
	e.publish(t, "procmon", "1.1.0")
	rs, err := e.svc.Releases(c, "procmon")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs {
		got = append(got, r.Version+"@"+r.OS+"/"+r.Arch+"@"+r.SHA256[:8])
	}
	if want := "1.1.0@linux/amd64@" + rs[0].SHA256[:8] + " 1.2.0@linux/amd64@" + amd.Manifest.SHA256[:8] + " 1.2.0@linux/arm64@" + arm.Manifest.SHA256[:8]; strings.Join(got, " ") != want {
		t.Fatalf("releases = %v, want %s", got, want)
	}
	ms, err := e.svc.Manifests(c, "procmon", "1.2.0")
	if err != nil || len(ms) != 2 || ms[0].Arch != "amd64" || ms[1].Arch != "arm64" {
		t.Fatalf("manifests of 1.2.0: %+v %v", ms, err)
	}
	var parsed signing.SignedManifest
	if err := json.Unmarshal(ms[1].Manifest, &parsed); err != nil || parsed.Manifest.SHA256 != arm.Manifest.SHA256 {
		t.Fatalf("arm64 manifest in the list: %v", err)
	}
	if _, err := e.svc.Manifests(c, "procmon", "9.9.9"); !errors.Is(err, ErrNoRelease) {
		t.Fatalf("manifests of an unpublished version: %v", err)
	}
	if _, err := e.svc.Manifest(c, "procmon", "1.2.0", "linux", "../x"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a platform that is not one key segment: %v", err)
	}
	// Now the rollout names both platforms; an unpublished version is
	// still refused.
	res, err = e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "procmon", Version: "1.2.0", Author: "a", Comment: "again"})
	if err != nil || strings.Join(res.Platforms, " ") != "linux/amd64 linux/arm64" {
		t.Fatalf("set with both platforms: %+v %v", res, err)
	}
	if _, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "procmon", Version: "1.3.0", Author: "a"}); !errors.Is(err, ErrNoRelease) ||
		!strings.Contains(err.Error(), "not published on any platform") {
		t.Fatalf("unpublished version: %v", err)
	}
	// A manifest at the single-platform key of older releases is listed
	// as such, not hidden.
	if _, err := e.cli.Put(c, e.ks.Releases()+"procmon/0.9.0", string(amdRaw)); err != nil {
		t.Fatal(err)
	}
	rs, err = e.svc.Releases(c, "procmon")
	if err != nil || len(rs) != 4 || !strings.Contains(rs[0].Version+rs[1].Version+rs[2].Version+rs[3].Version, "publish the bundle again") {
		t.Fatalf("old-layout key: %+v %v", rs, err)
	}
}

// TestRollbackPerPlatform: the guidance names one rollback manifest per
// platform, and a rollback release published for one platform counts.
func TestRollbackPerPlatform(t *testing.T) {
	e := newEnv(t, false)
	c := ctx(t)
	fleet := api.Scope{Kind: api.ScopeFleet}
	for _, v := range []string{"1.0.0", "1.1.0"} {
		for _, arch := range []string{"amd64", "arm64"} {
			sm, raw := manifestFor(t, "procmon", v, "linux", arch, []byte("procmon"+v+arch), "k1")
			if _, err := e.svc.Publish(c, raw, sm); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "procmon", Version: v, Author: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := e.svc.Undo(c, fleet, "procmon", "carol", "")
	for _, want := range []string{"each platform needs its own rollback manifest",
		"# linux/arm64: BINARY is sha256:",
		"--version 1.0.0+rollback.1 --os linux --arch amd64 --min-host-version 0.1.0 --rollback --expires 720h rollback-bundle-linux-amd64/",
		"--version 1.0.0+rollback.1 --os linux --arch arm64 --min-host-version 0.1.0 --rollback --expires 720h rollback-bundle-linux-arm64/",
		"vigilctl release publish rollback-bundle-linux-arm64/"} {
		if !errors.Is(err, ErrNeedsRollback) || !strings.Contains(err.Error(), want) {
			t.Fatalf("undo without rollback releases: %v; want %q", err, want)
		}
	}
	sm, _ := manifestFor(t, "procmon", "1.0.0+rollback.1", "linux", "arm64", []byte("procmon1.0.0arm64"))
	sm.Manifest.Rollback = true
	_, sec, err := signing.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := sm.Sign(sec); err != nil {
		t.Fatal(err)
	}
	raw, _ := sm.Marshal()
	if _, err := e.svc.Publish(c, raw, sm); err != nil {
		t.Fatal(err)
	}
	res, err := e.svc.Undo(c, fleet, "procmon", "carol", "")
	if err != nil || res.Version != "1.0.0+rollback.1" || strings.Join(res.Platforms, " ") != "linux/arm64" {
		t.Fatalf("undo with an arm64 rollback release: %+v %v", res, err)
	}
}
