package config

import (
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr []string // substrings that must all appear
		check   func(t *testing.T, c Config)
	}{
		{
			name: "minimal config keeps every default",
			yaml: "host_name: web-1\n",
			check: func(t *testing.T, c Config) {
				if c.HostName != "web-1" || c.Supervisor.QuarantineAfter != 5 || c.Heartbeat.Interval != time.Minute {
					t.Errorf("defaults lost: %+v", c)
				}
				if c.Sinks.File == nil || c.Sinks.File.Path == "" {
					t.Errorf("file sink default lost")
				}
			},
		},
		{
			name: "plugins with config and durations",
			yaml: `
host_name: web-1
labels: {idc: sh1, env: prod}
supervisor: {backoff_initial: 500ms, young_age: 1m}
plugins:
  - name: procmon
    path: /opt/vigil/bin/vigil-procmon
    config: {queue_size: 4096, rules: {allow: [a, b]}}
  - name: netmon
    path: /opt/vigil/bin/vigil-netmon
    enabled: false
`,
			check: func(t *testing.T, c Config) {
				if len(c.Plugins) != 2 || c.Plugins[1].IsEnabled() || !c.Plugins[0].IsEnabled() {
					t.Fatalf("plugins: %+v", c.Plugins)
				}
				if got := string(c.Plugins[0].PluginConfigJSON()); got != `{"queue_size":4096,"rules":{"allow":["a","b"]}}` {
					t.Errorf("plugin config as JSON = %s", got)
				}
				if c.Supervisor.BackoffInitial != 500*time.Millisecond || c.Supervisor.YoungAge != time.Minute {
					t.Errorf("durations: %+v", c.Supervisor)
				}
			},
		},
		{name: "unknown key", yaml: "host_name: a\nplugin: []\n", wantErr: []string{"line 2", "plugin", "is not a known key"}},
		{name: "not YAML", yaml: "host_name: [unclosed\n", wantErr: []string{"yaml"}},
		{name: "bad duration", yaml: "host_name: a\nsupervisor: {young_age: soon}\n", wantErr: []string{"soon"}},
		{
			name:    "values out of range, all reported",
			yaml:    "host_name: a\nsupervisor: {quarantine_after: 0, start_timeout: 1ms}\nheartbeat: {interval: 2h}\n",
			wantErr: []string{"supervisor.quarantine_after must be between 1 and 100 (got 0)", "supervisor.start_timeout must be between 1s and 5m0s (got 1ms)", "heartbeat.interval must be between 1s and 1h0m0s (got 2h0m0s)"},
		},
		{
			name:    "plugin problems name the plugin",
			yaml:    "host_name: a\nplugins:\n  - {name: x, path: ''}\n  - {name: x, path: /bin/x}\n  - {name: 'bad name', path: /bin/y, log_level: loud}\n",
			wantErr: []string{`plugins[0].path must name the plugin binary (plugin "x")`, `plugins[1].name "x" is listed twice`, `plugins[2].name must be a name`, `plugins[2].log_level must be one of trace, debug, info, warn, error (got "loud")`},
		},
		{
			name:    "vigil-host is not a plugin name",
			yaml:    "host_name: a\nplugins:\n  - {name: vigil-host, path: /bin/x}\n",
			wantErr: []string{`plugins[0].name "vigil-host" is vigil-host's own release name`},
		},
		{name: "bad host name", yaml: "host_name: 'a/b'\n", wantErr: []string{`host_name must be 1-253 letters`}},
		{name: "events need a sink", yaml: "host_name: a\nsinks: {file: null}\n", wantErr: []string{"events have nowhere to go"}},
		{
			name: "kafka sink alone", yaml: "host_name: a\nsinks: {file: null, kafka: {brokers: ['k1:9092'], topic: vigil-events, record_timeout: 10s}}\n",
			check: func(t *testing.T, c Config) {
				if k := c.Sinks.Kafka; k == nil || k.Topic != "vigil-events" || k.RecordTimeout != 10*time.Second {
					t.Fatalf("sinks.kafka: %+v", k)
				}
			},
		},
		{
			name:    "kafka sink problems",
			yaml:    "host_name: a\nsinks: {kafka: {brokers: [k1], topic: 'a b', compression: brotli}}\n",
			wantErr: []string{`sinks.kafka.brokers[0] "k1": want host:port`, `sinks.kafka.topic: "a b": character ' ' at 1`, `sinks.kafka.compression must be one of none, gzip, snappy, lz4, zstd (got "brotli")`},
		},
		{
			name:    "server sink problems",
			yaml:    "host_name: a\nsinks: {server: {queue_mb: -1, batch_kb: 1, flush_interval: 1h}}\n",
			wantErr: []string{"sinks.server.queue_mb must be between", "(got -1)", "sinks.server.batch_kb must be between", "sinks.server.flush_interval must be between", "sinks.server needs the server section"},
		},
		{
			name: "server sink alone", yaml: "host_name: a\nserver: {url: 'https://vigil:8443'}\nsinks: {file: null, server: {flush_interval: 2s}}\n",
			check: func(t *testing.T, c Config) {
				if s := c.Sinks.Server; s == nil || s.FlushInterval != 2*time.Second {
					t.Fatalf("sinks.server: %+v", s)
				}
			},
		},
		{name: "bad log level", yaml: "host_name: a\nlog: {level: loud}\n", wantErr: []string{"log.level must be one of", `(got "loud")`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(strings.NewReader(tt.yaml))
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("Parse accepted a bad config")
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	_, err := Load("/nonexistent/host.yaml")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/host.yaml") {
		t.Fatalf("Load of a missing file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("host_name: a\n")
	f.Add("host_name: a\nplugins:\n  - {name: x, path: /bin/x, config: {a: 1}}\n")
	f.Add("supervisor: {young_age: 1m}\nsinks: {stdout: true, file: null}\n")
	f.Add("{]")
	f.Fuzz(func(t *testing.T, doc string) {
		c, err := Parse(strings.NewReader(doc))
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		// Whatever parses is valid and usable.
		if verr := c.Validate(); verr != nil {
			t.Fatalf("Parse returned a config that does not validate: %v", verr)
		}
		for _, p := range c.Plugins {
			_ = p.PluginConfigJSON()
		}
	})
}
