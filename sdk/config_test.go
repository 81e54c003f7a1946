package sdk_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/sdk"
)

type limits struct {
	Depth int    `json:"depth" vigil:"min=1,max=8"`
	Mode  string `json:"mode" vigil:"enum=fast|safe"`
}

type testConfig struct {
	Interval  sdk.Duration `json:"interval" vigil:"min=1s,max=1h" desc:"how often to sample"`
	QueueSize int          `json:"queue_size" vigil:"min=1024,max=1048576"`
	Ratio     float64      `json:"ratio" vigil:"max=1"`
	Workers   uint         `json:"workers" vigil:"min=1"`
	Name      string       `json:"name" vigil:"min=1,max=8"`
	Paths     []string     `json:"paths" vigil:"max=2"`
	Enabled   bool         `json:"enabled"`
	Limits    limits       `json:"limits"`
	Internal  int          `json:"-"`
}

func defaultTestConfig() *testConfig {
	return &testConfig{
		Interval:  sdk.Duration(10 * time.Second),
		QueueSize: 4096,
		Ratio:     0.5,
		Workers:   2,
		Name:      "vigil",
		Paths:     []string{"/etc"},
		Enabled:   true,
		Limits:    limits{Depth: 4, Mode: "fast"},
		Internal:  7,
	}
}

// Validate rejects a name the tags cannot: it shows a plugin's own rule
// joined with the tag rules.
func (c *testConfig) Validate() error {
	if c.Name == "root" {
		return errors.New(`example.name must not be "root"`)
	}
	return nil
}

func TestDecodeConfig(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		change  func(c *testConfig) // applied to the defaults to make the wanted config
		wantErr []string            // the error's lines, exactly and in order
	}{
		{name: "empty document keeps defaults", raw: ``},
		{name: "null keeps defaults", raw: ` null `},
		{name: "empty object keeps defaults", raw: `{}`},
		{name: "one key changes one field", raw: `{"queue_size": 2048}`, change: func(c *testConfig) { c.QueueSize = 2048 }},
		{name: "nested key keeps sibling default", raw: `{"limits": {"mode": "safe"}}`, change: func(c *testConfig) { c.Limits.Mode = "safe" }},
		{name: "duration string", raw: `{"interval": "1m30s"}`, change: func(c *testConfig) { c.Interval = sdk.Duration(90 * time.Second) }},
		{name: "duration as seconds", raw: `{"interval": 2.5}`, change: func(c *testConfig) { c.Interval = sdk.Duration(2500 * time.Millisecond) }},
		{name: "list replaces the default list", raw: `{"paths": ["/a", "/b"]}`, change: func(c *testConfig) { c.Paths = []string{"/a", "/b"} }},
		{name: "bounds are inclusive", raw: `{"interval": "1h", "queue_size": 1024, "ratio": 1, "name": "12345678", "limits": {"depth": 8}}`,
			change: func(c *testConfig) {
				c.Interval, c.QueueSize, c.Ratio, c.Name, c.Limits.Depth = sdk.Duration(time.Hour), 1024, 1, "12345678", 8
			}},

		{name: "unknown key", raw: `{"queue": 1}`, wantErr: []string{`example: decoding config: unknown key "queue"`}},
		{name: "json dash field is not a key", raw: `{"Internal": 1}`, wantErr: []string{`example: decoding config: unknown key "Internal"`}},
		{name: "string for an integer", raw: `{"queue_size": "big"}`,
			wantErr: []string{`example: decoding config: key "queue_size" must be an integer (got string)`}},
		{name: "float for an integer", raw: `{"queue_size": 1.5}`,
			wantErr: []string{`example: decoding config: key "queue_size" must be an integer (got number 1.5)`}},
		{name: "number for a string", raw: `{"name": 5}`,
			wantErr: []string{`example: decoding config: key "name" must be a string (got number)`}},
		{name: "object for a bool", raw: `{"enabled": {}}`,
			wantErr: []string{`example: decoding config: key "enabled" must be true or false (got object)`}},
		{name: "nested type error names the path", raw: `{"limits": {"depth": "deep"}}`,
			wantErr: []string{`example: decoding config: key "limits.depth" must be an integer (got string)`}},
		{name: "bool for a duration", raw: `{"interval": true}`,
			wantErr: []string{`example: decoding config: key "interval" must be a duration such as "5s" (got true)`}},
		{name: "bad duration string", raw: `{"interval": "5 parsecs"}`,
			wantErr: []string{`example: decoding config: key "interval" must be a duration such as "5s" (got "5 parsecs")`}},
		{name: "trailing data", raw: `{} {}`, wantErr: []string{"example: decoding config: trailing data after the JSON object"}},
		{name: "not an object", raw: `[1]`,
			wantErr: []string{"example: decoding config: the config must be an object (got array)"}},

		{name: "duration below min", raw: `{"interval": "5ms"}`, wantErr: []string{"example.interval must be between 1s and 1h (got 5ms)"}},
		{name: "duration above max", raw: `{"interval": "90m"}`, wantErr: []string{"example.interval must be between 1s and 1h (got 1h30m0s)"}},
		{name: "integer below min", raw: `{"queue_size": 12}`, wantErr: []string{"example.queue_size must be between 1024 and 1048576 (got 12)"}},
		{name: "float above max only", raw: `{"ratio": 1.25}`, wantErr: []string{"example.ratio must be at most 1 (got 1.25)"}},
		{name: "unsigned below min only", raw: `{"workers": 0}`, wantErr: []string{"example.workers must be at least 1 (got 0)"}},
		{name: "string length", raw: `{"name": "much-too-long"}`, wantErr: []string{"example.name must be between 1 and 8 (got length 13)"}},
		{name: "list length", raw: `{"paths": ["/a", "/b", "/c"]}`, wantErr: []string{"example.paths must be at most 2 (got length 3)"}},
		{name: "nested enum", raw: `{"limits": {"mode": "slow"}}`, wantErr: []string{`example.limits.mode must be one of fast, safe (got "slow")`}},
		{name: "nested range", raw: `{"limits": {"depth": 0}}`, wantErr: []string{"example.limits.depth must be between 1 and 8 (got 0)"}},
		{name: "every problem is reported, tags then Validate", raw: `{"queue_size": 1, "name": "root", "limits": {"mode": "x", "depth": 9}}`,
			wantErr: []string{
				"example.queue_size must be between 1024 and 1048576 (got 1)",
				"example.limits.depth must be between 1 and 8 (got 9)",
				`example.limits.mode must be one of fast, safe (got "x")`,
				`example.name must not be "root"`,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaultTestConfig()
			err := sdk.DecodeConfig("example", []byte(tt.raw), cfg)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("DecodeConfig(%s) accepted %+v", tt.raw, cfg)
				}
				if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, tt.wantErr) {
					t.Fatalf("DecodeConfig(%s) error:\n%s\nwant:\n%s", tt.raw, err, strings.Join(tt.wantErr, "\n"))
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeConfig(%s) = %v", tt.raw, err)
			}
			want := defaultTestConfig()
			if tt.change != nil {
				tt.change(want)
			}
			if !reflect.DeepEqual(cfg, want) {
				t.Errorf("DecodeConfig(%s) =\n%+v\nwant\n%+v", tt.raw, cfg, want)
			}
		})
	}
}

func TestDurationJSONRoundTrip(t *testing.T) {
	for _, d := range []time.Duration{0, time.Millisecond, 90 * time.Second, 36 * time.Hour} {
		b, err := json.Marshal(sdk.Duration(d))
		if err != nil {
			t.Fatal(err)
		}
		var back sdk.Duration
		if err := json.Unmarshal(b, &back); err != nil || back.D() != d {
			t.Errorf("%v -> %s -> %v (%v)", d, b, back.D(), err)
		}
	}
}

func TestSchema(t *testing.T) {
	raw, err := sdk.Schema(defaultTestConfig())
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("schema is not JSON: %v\n%s", err, raw)
	}
	get := func(path ...string) any {
		var cur any = s
		for _, p := range path {
			m, ok := cur.(map[string]any)
			if !ok {
				return nil
			}
			cur = m[p]
		}
		return cur
	}
	tests := []struct {
		name string
		path []string
		want any
	}{
		{"dialect", []string{"$schema"}, "https://json-schema.org/draft/2020-12/schema"},
		{"object", []string{"type"}, "object"},
		{"strict", []string{"additionalProperties"}, false},
		{"duration type", []string{"properties", "interval", "type"}, "string"},
		{"duration format", []string{"properties", "interval", "format"}, "duration"},
		{"duration min", []string{"properties", "interval", "x-minimum-duration"}, "1s"},
		{"duration max", []string{"properties", "interval", "x-maximum-duration"}, "1h"},
		{"duration default", []string{"properties", "interval", "default"}, "10s"},
		{"description", []string{"properties", "interval", "description"}, "how often to sample"},
		{"integer type", []string{"properties", "queue_size", "type"}, "integer"},
		{"integer min", []string{"properties", "queue_size", "minimum"}, 1024.0},
		{"integer max", []string{"properties", "queue_size", "maximum"}, 1048576.0},
		{"integer default", []string{"properties", "queue_size", "default"}, 4096.0},
		{"number max", []string{"properties", "ratio", "maximum"}, 1.0},
		{"number has no min", []string{"properties", "ratio", "minimum"}, nil},
		{"unsigned is integer", []string{"properties", "workers", "type"}, "integer"},
		{"string length", []string{"properties", "name", "maxLength"}, 8.0},
		{"list items", []string{"properties", "paths", "items", "type"}, "string"},
		{"list length", []string{"properties", "paths", "maxItems"}, 2.0},
		{"bool", []string{"properties", "enabled", "type"}, "boolean"},
		{"nested strict", []string{"properties", "limits", "additionalProperties"}, false},
		{"nested enum", []string{"properties", "limits", "properties", "mode", "enum"}, []any{"fast", "safe"}},
		{"nested default", []string{"properties", "limits", "properties", "depth", "default"}, 4.0},
		{"json dash omitted", []string{"properties", "Internal"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := get(tt.path...); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s = %#v, want %#v", strings.Join(tt.path, "."), got, tt.want)
			}
		})
	}
}

func TestBadTagIsReported(t *testing.T) {
	err := sdk.DecodeConfig("x", []byte(`{}`), &badTagConfig{})
	if err == nil || !strings.Contains(err.Error(), `sdk: bad vigil tag "minimum=3"`) {
		t.Errorf("bad tag error = %v", err)
	}
	if _, err := sdk.Schema(&badTagConfig{}); err == nil {
		t.Error("Schema accepted a bad tag")
	}
}

type badTagConfig struct {
	N int `json:"n" vigil:"minimum=3"`
}

func (*badTagConfig) Validate() error { return nil }

// FuzzDecodeConfig decodes arbitrary documents over a config with every
// kind of tag rule: it must never panic, and every line of an error must
// name the plugin (and so the key, for rule errors).
func FuzzDecodeConfig(f *testing.F) {
	for _, seed := range []string{
		``, `null`, `{}`, `{"interval": "5ms"}`, `{"interval": 1e300}`, `{"interval": -1}`,
		`{"queue_size": 1e20}`, `{"limits": {"depth": -1, "mode": ""}}`, `{"paths": [1, 2]}`,
		`{"name": "root", "ratio": "NaN"}`, `{"limits": null}`, `{"x": 1} trailing`, `[`, `"str"`,
		`{"workers": -1}`, `{"enabled": "yes"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		cfg := defaultTestConfig()
		err := sdk.DecodeConfig("example", raw, cfg)
		if err == nil {
			if _, serr := sdk.Schema(cfg); serr != nil {
				t.Fatalf("Schema of an accepted config: %v", serr)
			}
			return
		}
		for _, line := range strings.Split(err.Error(), "\n") {
			if !strings.HasPrefix(line, "example.") && !strings.HasPrefix(line, "example:") {
				t.Fatalf("error line %q does not name the plugin's key (document %q)", line, raw)
			}
		}
	})
}
