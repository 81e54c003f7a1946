package catalog_test

import (
	"encoding/json"
	"errors"
	"sort"
	"strings"
	"testing"

	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/plugins/example"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		plugin  string
		raw     string
		wantErr string // exact message; empty: valid
	}{
		{name: "example defaults", plugin: "example", raw: ``},
		{name: "example null", plugin: "example", raw: `null`},
		{name: "example interval", plugin: "example", raw: `{"interval": "2s"}`},
		{name: "example interval too short", plugin: "example", raw: `{"interval": "5ms"}`,
			wantErr: "example.interval must be between 1s and 1h (got 5ms)"},
		{name: "example unknown key", plugin: "example", raw: `{"interval": "2s", "color": "red"}`,
			wantErr: `example: decoding config: unknown key "color"`},
		{name: "testplugin flood", plugin: "testplugin", raw: `{"flood_total": -1, "alert_every": 10}`},
		{name: "testplugin two problems", plugin: "testplugin", raw: `{"spin_cpu_percent": 101, "spin_threads": 0}`,
			wantErr: "testplugin.spin_cpu_percent must be between 0 and 100 (got 101)\ntestplugin.spin_threads must be between 1 and 64 (got 0)"},
		{name: "unknown plugin", plugin: "x", raw: `{}`,
			wantErr: `catalog: unknown plugin "x" (known: ` + strings.Join(catalog.Names(), ", ") + `)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := catalog.Validate(tt.plugin, json.RawMessage(tt.raw))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate(%s, %s) = %v", tt.plugin, tt.raw, err)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("Validate(%s, %s) = %v, want %q", tt.plugin, tt.raw, err, tt.wantErr)
			}
		})
	}
	if err := catalog.Validate("nope", nil); !errors.Is(err, catalog.ErrUnknownPlugin) {
		t.Errorf("unknown plugin error %v does not match ErrUnknownPlugin", err)
	}
}

func TestDecodeKeepsDefaults(t *testing.T) {
	cfg, err := catalog.Decode("example", json.RawMessage(`{"interval": "2s"}`))
	if err != nil {
		t.Fatal(err)
	}
	got := cfg.(*example.Config)
	want := example.DefaultConfig()
	want.Interval = got.Interval
	if *got != *want || got.Interval.D().String() != "2s" {
		t.Errorf("Decode = %+v, want the defaults with interval 2s", got)
	}
}

func TestConfigsAreFreshAndComplete(t *testing.T) {
	a, b := catalog.Configs(), catalog.Configs()
	delete(a, "example")
	if _, ok := b["example"]; !ok {
		t.Fatal("deleting from one Configs map changed another")
	}
	names := catalog.Names()
	if !sort.StringsAreSorted(names) || len(names) != len(b) {
		t.Errorf("Names = %v, want the %d names of Configs, sorted", names, len(b))
	}
	for _, want := range []string{"example", "testplugin"} {
		if _, ok := b[want]; !ok {
			t.Errorf("Configs lacks %s", want)
		}
	}
	for name, mk := range b {
		c1, c2 := mk(), mk()
		if c1 == c2 {
			t.Errorf("%s: two calls returned one config", name)
		}
		if err := c1.Validate(); err != nil {
			t.Errorf("%s: defaults do not validate: %v", name, err)
		}
	}
}
