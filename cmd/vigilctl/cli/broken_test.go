package cli

import (
	"testing"

	"github.com/vigil-hids/vigil/api"
)

func TestBrokenPlugins(t *testing.T) {
	tests := []struct {
		name string
		ps   map[string]api.PluginStatus
		want string
	}{
		{name: "all healthy", ps: map[string]api.PluginStatus{"a": {State: "running", Breaker: "closed"}, "b": {State: "stopped"}}, want: ""},
		{name: "breaker open", ps: map[string]api.PluginStatus{"procmon": {State: "held", Breaker: "open: cpu (cpu 23% >= 10% for 4 samples), retry in 27s"}},
			want: "procmon: breaker open: cpu (cpu 23% >= 10% for 4 samples), retry in 27s"},
		{name: "quarantined and failed, sorted", ps: map[string]api.PluginStatus{
			"z": {State: "failed", LastError: "config rejected"},
			"a": {State: "quarantined", LastError: "died young 5 times"},
		}, want: "a: quarantined: died young 5 times; z: failed: config rejected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := brokenPlugins(tt.ps); got != tt.want {
				t.Errorf("brokenPlugins = %q, want %q", got, tt.want)
			}
		})
	}
}
