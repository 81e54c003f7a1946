package desired

import (
	"errors"
	"strings"
	"testing"

	"github.com/vigil-hids/vigil/api"
)

func TestCheckVersionAndRollout(t *testing.T) {
	tests := []struct {
		name string
		st   api.DesiredState
		want []string // nil means valid
	}{
		{name: "version and rollout", st: api.DesiredState{Plugins: map[string]api.PluginState{
			"procmon": {Version: "1.2.0", Rollout: &api.Rollout{Percent: 10, From: "1.1.0"}}}}},
		{name: "version of a plugin the catalog does not know", st: api.DesiredState{Plugins: map[string]api.PluginState{
			"thirdparty": {Version: "0.3.0", Rollout: &api.Rollout{Percent: 50}}}}},
		{name: "enabling a plugin the catalog does not know", st: api.DesiredState{Plugins: map[string]api.PluginState{
			"thirdparty": {Version: "0.3.0", Enabled: new(bool)}}}, want: []string{`plugins.thirdparty: unknown plugin "thirdparty"`}},
		{name: "host version", st: api.DesiredState{HostVersion: "2.0.0-rc.1", HostRollout: &api.Rollout{Percent: 100}}},
		{name: "not semver", st: api.DesiredState{Plugins: map[string]api.PluginState{"procmon": {Version: "latest"}}},
			want: []string{`plugins.procmon.version must be a semver version MAJOR.MINOR.PATCH (got "latest")`}},
		{name: "percent out of range", st: api.DesiredState{Plugins: map[string]api.PluginState{
			"procmon": {Version: "1.2.0", Rollout: &api.Rollout{Percent: 0}}}},
			want: []string{"plugins.procmon.rollout.percent must be between 1 and 100 (got 0)"}},
		{name: "rollout without version", st: api.DesiredState{HostRollout: &api.Rollout{Percent: 101, From: "x"}},
			want: []string{"host_rollout needs host_version", "host_rollout.percent must be between 1 and 100 (got 101)",
				`host_rollout.from must be a semver version MAJOR.MINOR.PATCH (got "x")`}},
		{name: "bad host version", st: api.DesiredState{HostVersion: "v1"}, want: []string{`host_version must be a semver`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.st, testValidator)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Check = %v, want ErrInvalid", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
