package desired

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/sdk"
)

// testConfig stands in for a plugin's config type: the rules come from the
// sdk tags and its Validate, exactly as a real plugin's would.
type testConfig struct {
	QueueSize int    `json:"queue_size" vigil:"min=1024,max=1048576"`
	Mode      string `json:"mode" vigil:"enum=fast|safe"`
}

func (c *testConfig) Validate() error { return nil }

// testValidator knows one plugin, "procmon", checked by sdk.DecodeConfig.
func testValidator(plugin string, raw json.RawMessage) error {
	if plugin != "procmon" {
		return fmt.Errorf("unknown plugin %q", plugin)
	}
	return sdk.DecodeConfig(plugin, raw, &testConfig{QueueSize: 4096, Mode: "fast"})
}

func TestParseFixtures(t *testing.T) {
	tests := []struct {
		name string
		file string
		want string // "" means valid
	}{
		{name: "yaml", file: "good.yaml"},
		{name: "json", file: "good.json"},
		{name: "json syntax", file: "bad-syntax.json", want: "line 1 column"},
		{name: "yaml indentation", file: "bad-indent.yaml", want: "YAML: yaml: line"},
		{name: "unknown key", file: "unknown-key.yaml", want: `unknown key "log_levl"`},
		{name: "duplicate key", file: "duplicate-key.yaml", want: "already defined"},
		{name: "two documents", file: "two-docs.yaml", want: "more than one document"},
		{name: "wrong type", file: "wrong-type.json", want: `key "stop" must be a bool (got string)`},
		{name: "trailing data", file: "trailing.json", want: "trailing data"},
		{name: "not a mapping", file: "list.yaml", want: "must be a mapping (got a list)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			st, err := Parse(data)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if err := Check(st, testValidator); err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse error = %v, want ErrInvalid containing %q", err, tt.want)
			}
		})
	}
}

func TestParseYAMLFlowMapping(t *testing.T) {
	st, err := Parse([]byte("{log_level: debug, plugins: {procmon: {enabled: true}}}"))
	if err != nil || st.LogLevel != "debug" || st.Plugins["procmon"].Enabled == nil {
		t.Fatalf("flow mapping: %+v %v", st, err)
	}
	if _, err := Parse([]byte(`{"log_level": "debug",}`)); err == nil || !strings.Contains(err.Error(), "JSON: line 1 column") {
		t.Fatalf("broken JSON must report the JSON error: %v", err)
	}
}

func TestParseYAMLEqualsJSON(t *testing.T) {
	y, err := Parse([]byte("plugins:\n  procmon:\n    config: {queue_size: 2048, mode: safe}\ntasks:\n- {id: a, plugin: procmon, name: n, spread: 1m}\n"))
	if err != nil {
		t.Fatal(err)
	}
	j, err := Parse([]byte(`{"plugins":{"procmon":{"config":{"mode":"safe","queue_size":2048}}},"tasks":[{"id":"a","plugin":"procmon","name":"n","spread":"1m0s"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	yb, _ := json.Marshal(y)
	jb, _ := json.Marshal(j)
	if string(yb) != string(jb) {
		t.Fatalf("YAML and JSON differ:\n%s\n%s", yb, jb)
	}
}

func TestCheck(t *testing.T) {
	on := true
	tests := []struct {
		name string
		st   api.DesiredState
		want []string
	}{
		{name: "host release name", st: api.DesiredState{Plugins: map[string]api.PluginState{"vigil-host": {Version: "1.2.0"}}},
			want: []string{`plugins: "vigil-host" is vigil-host's own release name, not a plugin (set host_version to update the host)`}},
		{name: "unknown plugin", st: api.DesiredState{Plugins: map[string]api.PluginState{"nosuch": {Enabled: &on}}},
			want: []string{`plugins.nosuch: unknown plugin "nosuch"`}},
		{name: "out of range, the plugin's own message",
			st:   api.DesiredState{Plugins: map[string]api.PluginState{"procmon": {Config: json.RawMessage(`{"queue_size":12}`)}}},
			want: []string{"procmon.queue_size must be between 1024 and 1048576 (got 12)"}},
		{name: "enum", st: api.DesiredState{Plugins: map[string]api.PluginState{"procmon": {Config: json.RawMessage(`{"mode":"slow"}`)}}},
			want: []string{"procmon.mode"}},
		{name: "limits out of range", st: api.DesiredState{Plugins: map[string]api.PluginState{"procmon": {Limits: json.RawMessage(`{"cpu_percent":0,"pids":3}`)}}},
			want: []string{"plugins.procmon.limits.cpu_percent must be between 0.1 and 400 (got 0)", "plugins.procmon.limits.pids must be 0 (none) or at least 8 (got 3)"}},
		{name: "limits unknown key", st: api.DesiredState{Plugins: map[string]api.PluginState{"procmon": {Limits: json.RawMessage(`{"cpu":3}`)}}},
			want: []string{`plugins.procmon.limits: json: unknown field "cpu"`}},
		{name: "limits unknown profile", st: api.DesiredState{Plugins: map[string]api.PluginState{"procmon": {Limits: json.RawMessage(`{"profile":"lax"}`)}}},
			want: []string{`plugins.procmon.limits.profile: unknown profile "lax" (want normal or strict)`}},
		{name: "log levels", st: api.DesiredState{LogLevel: "loud", Plugins: map[string]api.PluginState{"procmon": {LogLevel: "verbose"}}},
			want: []string{`log_level must be one of`, `(got "loud")`, `plugins.procmon.log_level must be one of`}},
		{name: "tasks", st: api.DesiredState{Tasks: []api.Task{{ID: "a", Plugin: "procmon", Name: "x"}, {ID: "a", Plugin: "nosuch", Name: "", Spread: api.Duration(-1)}}},
			want: []string{`tasks[1].id "a" is used twice`, "tasks[1].name is required", `tasks[1].plugin: unknown plugin "nosuch"`, "tasks[1].spread must be between"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.st, testValidator)
			if err == nil || !errors.Is(err, ErrInvalid) {
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

func TestCheckAcceptsGoodLimits(t *testing.T) {
	for _, raw := range []string{`{"profile":"strict","cpu_percent":3,"cooldown":"1m"}`, `{}`, `{"memory_bytes":67108864}`} {
		st := api.DesiredState{Plugins: map[string]api.PluginState{"procmon": {Limits: json.RawMessage(raw)}}}
		if err := Check(st, testValidator); err != nil {
			t.Errorf("Check(limits %s) = %v", raw, err)
		}
	}
}

func TestCheckSize(t *testing.T) {
	tests := []struct {
		name    string
		doc     int
		limit   int
		wantErr bool
	}{
		{name: "small", doc: 1000, limit: 0},
		{name: "half the default limit is too large", doc: DefaultMaxRequestBytes / 2, limit: 0, wantErr: true},
		{name: "custom limit", doc: 10000, limit: 16384, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckSize(tt.doc, tt.doc, tt.limit)
			if (err != nil) != tt.wantErr || (err != nil && !errors.Is(err, ErrTooLarge)) {
				t.Fatalf("CheckSize = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}

// FuzzParse checks that Parse never panics, and that whatever it accepts
// survives a JSON round trip unchanged.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*")
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("stop: true"))
	f.Add([]byte("{}"))
	f.Add([]byte("plugins: {a: {config: [1, 2.5, null, {x: y}]}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not wrapped in ErrInvalid: %v", err)
			}
			return
		}
		b, err := json.Marshal(st)
		if err != nil {
			t.Fatalf("accepted document does not marshal: %v", err)
		}
		again, err := Parse(b)
		if err != nil {
			t.Fatalf("re-parsing %s: %v", b, err)
		}
		b2, _ := json.Marshal(again)
		if string(b) != string(b2) {
			t.Fatalf("round trip changed the document:\n%s\n%s", b, b2)
		}
		_ = Check(st, testValidator)
	})
}
