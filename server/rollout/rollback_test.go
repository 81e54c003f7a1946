package rollout

import (
	"errors"
	"strings"
	"testing"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/signing"
)

// publishRollback publishes the binary of plugin's version again as
// rbVersion with a signed rollback flag.
func (e *env) publishRollback(t *testing.T, plugin, version, rbVersion string) {
	t.Helper()
	sm, _ := manifest(t, plugin, rbVersion, []byte(plugin+version))
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
	if _, err := e.svc.Publish(ctx(t), raw, sm); err != nil {
		t.Fatal(err)
	}
}

func TestDowngradesNeedRollbackReleases(t *testing.T) {
	e := newEnv(t, false)
	c := ctx(t)
	fleet := api.Scope{Kind: api.ScopeFleet}
	for _, v := range []string{"1.0.0", "1.1.0"} {
		e.publish(t, "procmon", v)
	}
	if _, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "procmon", Version: "1.0.0", Author: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "procmon", Version: "1.1.0", Author: "a"}); err != nil {
		t.Fatal(err)
	}
	// Undo and set to the lower version are refused with the commands
	// that make a rollback release.
	_, err := e.svc.Undo(c, fleet, "procmon", "carol", "")
	for _, want := range []string{"procmon 1.0.0 would replace 1.1.0", "no rollback release of 1.0.0 is published",
		"vigil-sign sign -s RELEASE.key --binary BINARY --plugin procmon --version 1.0.0+rollback.1 --os linux --arch amd64 --min-host-version 0.1.0 --rollback",
		"vigilctl release publish rollback-bundle/"} {
		if !errors.Is(err, ErrNeedsRollback) || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Fatalf("undo without a rollback release: %v; want %q", err, want)
		}
	}
	if _, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "procmon", Version: "1.0.0", Author: "a"}); !errors.Is(err, ErrNeedsRollback) {
		t.Fatalf("set to a lower version: %v", err)
	}
	// Lowering a percentage moves hosts back to From: refused too.
	if _, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "procmon", Version: "1.1.0", Percent: 50, Author: "a"}); err == nil {
		t.Fatal("a percentage of the version every host runs was accepted")
	}

	// With rollback releases (the newest wins), undo writes it.
	e.publishRollback(t, "procmon", "1.0.0", "1.0.0+rollback.1")
	e.publishRollback(t, "procmon", "1.0.0", "1.0.0+rollback.2")
	if _, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "procmon", Version: "1.0.0", Author: "a"}); !errors.Is(err, ErrNeedsRollback) ||
		!strings.Contains(err.Error(), "vigilctl rollout set procmon 1.0.0+rollback.2 --scope fleet") {
		t.Fatalf("set to the plain lower version with a rollback published: %v", err)
	}
	res, err := e.svc.Undo(c, fleet, "procmon", "carol", "")
	if err != nil || res.Version != "1.0.0+rollback.2" || !strings.Contains(res.Comment, "1.0.0 as its signed rollback release 1.0.0+rollback.2") {
		t.Fatalf("undo with a rollback release: %+v %v", res, err)
	}
	// Going up again needs nothing; the explicit rollback version is accepted.
	if _, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "procmon", Version: "1.1.0", Author: "a"}); err != nil {
		t.Fatal(err)
	}
	if res, err := e.svc.Set(c, SetRequest{Scope: fleet, Plugin: "procmon", Version: "1.0.0+rollback.1", Author: "a"}); err != nil || res.Version != "1.0.0+rollback.1" {
		t.Fatalf("set to a rollback release: %+v %v", res, err)
	}
	// 1.0.0+rollback.1 has 1.0.0's precedence: not a downgrade from 1.0.0.
	if d := downgrades(pair{Version: "1.0.0"}, pair{Version: "1.0.0+rollback.1"}); len(d) != 0 {
		t.Fatalf("same precedence counted as a downgrade: %v", d)
	}
	// Raising a percentage moves no host down.
	if d := downgrades(pair{Version: "1.1.0", Rollout: &api.Rollout{Percent: 5, From: "1.0.0"}},
		pair{Version: "1.1.0", Rollout: &api.Rollout{Percent: 50, From: "1.0.0"}}); len(d) != 0 {
		t.Fatalf("raising a percentage counted as a downgrade: %v", d)
	}
	if d := downgrades(pair{Version: "1.1.0", Rollout: &api.Rollout{Percent: 50, From: "1.0.0"}},
		pair{Version: "1.1.0", Rollout: &api.Rollout{Percent: 5, From: "1.0.0"}}); len(d) != 1 || d[0] != (downgrade{"1.0.0", "1.1.0"}) {
		t.Fatalf("lowering a percentage: %v", d)
	}
}
