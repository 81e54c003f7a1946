package api

import (
	"fmt"
	"testing"
)

func TestTargetVersionPercent(t *testing.T) {
	r := &Rollout{Percent: 10, From: "1.0.0"}
	took := 0
	for i := range 10000 {
		host := fmt.Sprintf("host-%05d", i)
		v := TargetVersion(host, "procmon", "1.1.0", r)
		switch v {
		case "1.1.0":
			took++
		case "1.0.0":
		default:
			t.Fatalf("%s: TargetVersion = %q", host, v)
		}
		// Raising the percentage only adds hosts.
		if v == "1.1.0" && TargetVersion(host, "procmon", "1.1.0", &Rollout{Percent: 50, From: "1.0.0"}) != "1.1.0" {
			t.Fatalf("%s left the canary when the rollout grew", host)
		}
	}
	if took < 850 || took > 1150 {
		t.Errorf("10%% rollout took %d of 10000 hosts", took)
	}
	if v := TargetVersion("h", "p", "2.0.0", nil); v != "2.0.0" {
		t.Errorf("no rollout: %q", v)
	}
	if v := TargetVersion("h", "p", "2.0.0", &Rollout{Percent: 100}); v != "2.0.0" {
		t.Errorf("100%%: %q", v)
	}
}

func TestMergeRolloutFollowsVersion(t *testing.T) {
	fleet := DesiredState{Plugins: map[string]PluginState{"p": {Version: "2.0.0", Rollout: &Rollout{Percent: 5, From: "1.0.0"}}},
		HostVersion: "1.2.0", HostRollout: &Rollout{Percent: 1}}
	host := DesiredState{Plugins: map[string]PluginState{"p": {Version: "2.0.0"}}}
	got := Merge(fleet, host)
	if got.Plugins["p"].Rollout != nil {
		t.Errorf("a narrower version kept the wider rollout: %+v", got.Plugins["p"].Rollout)
	}
	got = Merge(fleet, DesiredState{Plugins: map[string]PluginState{"p": {LogLevel: "debug"}}})
	if r := got.Plugins["p"].Rollout; r == nil || r.Percent != 5 || r == fleet.Plugins["p"].Rollout {
		t.Errorf("rollout not inherited as a copy: %+v", r)
	}
	if got.HostVersion != "1.2.0" || got.HostRollout == nil || got.HostRollout == fleet.HostRollout {
		t.Errorf("host version not inherited as a copy: %q %+v", got.HostVersion, got.HostRollout)
	}
}
