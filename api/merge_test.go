package api

import (
	"encoding/json"
	"reflect"
	"testing"
)

func ptr[T any](v T) *T { return &v }

func TestMerge(t *testing.T) {
	tests := []struct {
		name   string
		layers []DesiredState
		want   DesiredState
	}{
		{
			name: "no layers",
			want: DesiredState{},
		},
		{
			name: "unset fields inherit",
			layers: []DesiredState{
				{Stop: ptr(false), LogLevel: "info"},
				{},
				{Plugins: map[string]PluginState{"procmon": {Enabled: ptr(true)}}},
			},
			want: DesiredState{Stop: ptr(false), LogLevel: "info",
				Plugins: map[string]PluginState{"procmon": {Enabled: ptr(true)}}},
		},
		{
			name: "limits merge key by key like config",
			layers: []DesiredState{
				{Plugins: map[string]PluginState{"procmon": {Limits: json.RawMessage(`{"profile":"strict","cpu_percent":3}`)}}},
				{Plugins: map[string]PluginState{"procmon": {Limits: json.RawMessage(`{"cpu_percent":4}`)}}},
			},
			want: DesiredState{Plugins: map[string]PluginState{"procmon": {Limits: json.RawMessage(`{"cpu_percent":4,"profile":"strict"}`)}}},
		},
		{
			name: "narrower scope overrides stop, even to false",
			layers: []DesiredState{
				{Stop: ptr(true)},
				{Stop: ptr(false)},
			},
			want: DesiredState{Stop: ptr(false)},
		},
		{
			name: "plugin fields merge one by one",
			layers: []DesiredState{
				{Plugins: map[string]PluginState{"procmon": {Enabled: ptr(true), Version: "1.0.0", LogLevel: "info"}}},
				{Plugins: map[string]PluginState{"procmon": {Enabled: ptr(false)}, "netmon": {Enabled: ptr(true)}}},
				{Plugins: map[string]PluginState{"procmon": {Version: "1.1.0"}}},
			},
			want: DesiredState{Plugins: map[string]PluginState{
				"procmon": {Enabled: ptr(false), Version: "1.1.0", LogLevel: "info"},
				"netmon":  {Enabled: ptr(true)},
			}},
		},
		{
			name: "object configs merge key by key recursively",
			layers: []DesiredState{
				{Plugins: map[string]PluginState{"p": {Config: json.RawMessage(`{"a":1,"n":{"x":1,"y":2},"l":[1,2]}`)}}},
				{Plugins: map[string]PluginState{"p": {Config: json.RawMessage(`{"b":2,"n":{"y":3},"l":[3]}`)}}},
			},
			want: DesiredState{Plugins: map[string]PluginState{
				"p": {Config: json.RawMessage(`{"a":1,"b":2,"l":[3],"n":{"x":1,"y":3}}`)},
			}},
		},
		{
			name: "non-object config replaces",
			layers: []DesiredState{
				{Plugins: map[string]PluginState{"p": {Config: json.RawMessage(`{"a":1}`)}}},
				{Plugins: map[string]PluginState{"p": {Config: json.RawMessage(`[1]`)}}},
			},
			want: DesiredState{Plugins: map[string]PluginState{"p": {Config: json.RawMessage(`[1]`)}}},
		},
		{
			name: "object replaces a non-object",
			layers: []DesiredState{
				{Plugins: map[string]PluginState{"p": {Config: json.RawMessage(`"x"`)}}},
				{Plugins: map[string]PluginState{"p": {Config: json.RawMessage(`{"a":1}`)}}},
			},
			want: DesiredState{Plugins: map[string]PluginState{"p": {Config: json.RawMessage(`{"a":1}`)}}},
		},
		{
			name: "null value replaces a key",
			layers: []DesiredState{
				{Plugins: map[string]PluginState{"p": {Config: json.RawMessage(`{"a":{"b":1}}`)}}},
				{Plugins: map[string]PluginState{"p": {Config: json.RawMessage(`{"a":null}`)}}},
			},
			want: DesiredState{Plugins: map[string]PluginState{"p": {Config: json.RawMessage(`{"a":null}`)}}},
		},
		{
			name: "invalid json replaces and is left for the plugin to reject",
			layers: []DesiredState{
				{Plugins: map[string]PluginState{"p": {Config: json.RawMessage(`{"a":1}`)}}},
				{Plugins: map[string]PluginState{"p": {Config: json.RawMessage(`{"a":`)}}},
			},
			want: DesiredState{Plugins: map[string]PluginState{"p": {Config: json.RawMessage(`{"a":`)}}},
		},
		{
			name: "tasks union by id, narrower replaces",
			layers: []DesiredState{
				{Tasks: []Task{{ID: "t1", Plugin: "a", Name: "scan"}, {ID: "t2", Plugin: "a", Name: "x"}}},
				{Tasks: []Task{{ID: "t3", Plugin: "b", Name: "y"}}},
				{Tasks: []Task{{ID: "t1", Plugin: "a", Name: "scan-host"}}},
			},
			want: DesiredState{Tasks: []Task{
				{ID: "t1", Plugin: "a", Name: "scan-host"},
				{ID: "t2", Plugin: "a", Name: "x"},
				{ID: "t3", Plugin: "b", Name: "y"},
			}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Merge(tc.layers...)
			if !reflect.DeepEqual(got, tc.want) {
				gj, _ := json.Marshal(got)
				wj, _ := json.Marshal(tc.want)
				t.Fatalf("Merge =\n%s\nwant\n%s", gj, wj)
			}
		})
	}
}

func TestMergeDoesNotAlias(t *testing.T) {
	fleet := DesiredState{
		Stop:    ptr(true),
		Plugins: map[string]PluginState{"p": {Enabled: ptr(true), Config: json.RawMessage(`{"a":1}`)}},
		Tasks:   []Task{{ID: "t", Args: json.RawMessage(`{"x":1}`)}},
	}
	got := Merge(fleet)
	*got.Stop = false
	*got.Plugins["p"].Enabled = false
	got.Plugins["p"].Config[1] = 'X'
	got.Tasks[0].Args[1] = 'X'
	got.Plugins["q"] = PluginState{}
	if !*fleet.Stop || !*fleet.Plugins["p"].Enabled || string(fleet.Plugins["p"].Config) != `{"a":1}` ||
		string(fleet.Tasks[0].Args) != `{"x":1}` || len(fleet.Plugins) != 1 {
		t.Fatalf("changing the merged state changed the layer: %+v", fleet)
	}
}

func TestGroupScopes(t *testing.T) {
	tests := []struct {
		name   string
		labels map[string]string
		want   []Scope
	}{
		{name: "none", labels: nil, want: []Scope{}},
		{
			name:   "sorted by label",
			labels: map[string]string{"idc": "sh1", "env": "prod", "group": "web"},
			want: []Scope{
				{Kind: ScopeGroup, Label: "env", Value: "prod"},
				{Kind: ScopeGroup, Label: "group", Value: "web"},
				{Kind: ScopeGroup, Label: "idc", Value: "sh1"},
			},
		},
		{
			name:   "invalid names cannot form a key and are skipped",
			labels: map[string]string{"env": "prod/../x", "a b": "c", "ok": "yes"},
			want:   []Scope{{Kind: ScopeGroup, Label: "ok", Value: "yes"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := GroupScopes(tc.labels); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("GroupScopes = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestHostScopes(t *testing.T) {
	got := HostScopes("h1", map[string]string{"env": "prod"})
	want := []Scope{{Kind: ScopeFleet}, {Kind: ScopeGroup, Label: "env", Value: "prod"}, {Kind: ScopeHost, Host: "h1"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("HostScopes = %v, want %v", got, want)
	}
}

// FuzzMergeConfig checks that merging two valid JSON configs gives valid
// JSON in which every key of an object overlay is present.
func FuzzMergeConfig(f *testing.F) {
	f.Add(`{"a":1,"n":{"x":1}}`, `{"n":{"y":2},"b":[1]}`)
	f.Add(`[1,2]`, `{"a":1}`)
	f.Add(`{"a":1}`, `null`)
	f.Add(`{}`, `{"a":{"b":{"c":1}}}`)
	f.Fuzz(func(t *testing.T, base, over string) {
		if !json.Valid([]byte(base)) || !json.Valid([]byte(over)) || len(over) == 0 {
			return // Merge is only given JSON documents; nothing to check
		}
		got := mergeJSON(json.RawMessage(base), json.RawMessage(over))
		if !json.Valid(got) {
			t.Fatalf("mergeJSON(%s, %s) = %s, not valid JSON", base, over, got)
		}
		var o map[string]json.RawMessage
		if isObject(json.RawMessage(over)) && json.Unmarshal([]byte(over), &o) == nil {
			var g map[string]json.RawMessage
			if err := json.Unmarshal(got, &g); err != nil {
				t.Fatalf("merged %s is not an object: %v", got, err)
			}
			for k := range o {
				if _, ok := g[k]; !ok {
					t.Fatalf("key %q of the overlay is missing from %s", k, got)
				}
			}
		}
	})
}
