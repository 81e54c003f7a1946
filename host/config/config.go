// Package config reads vigil-host's YAML config file: which plugins to run
// with which settings, where events and logs go, and how the host is
// supervised. Decoding is strict (an unknown key is an error), absent keys
// take the defaults in Default, and Validate names every bad key with its
// allowed range and the value found.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v3"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/control"
	"github.com/vigil-hids/vigil/host/logging"
	"github.com/vigil-hids/vigil/host/pipeline"
	"github.com/vigil-hids/vigil/host/sink"
)

// Config is the host's config file.
type Config struct {
	// HostName identifies the host in events and in the fleet; default: the
	// kernel's host name.
	HostName string            `yaml:"host_name"`
	Labels   map[string]string `yaml:"labels"`
	// StateDir keeps what must survive a restart (last good desired state).
	StateDir string `yaml:"state_dir"`
	// RunDir holds the status socket (host.sock), root-only.
	RunDir     string          `yaml:"run_dir"`
	Log        logging.Config  `yaml:"log"`
	Plugins    []Plugin        `yaml:"plugins"`
	Supervisor Supervisor      `yaml:"supervisor"`
	Pipeline   pipeline.Config `yaml:"pipeline"`
	Sinks      Sinks           `yaml:"sinks"`
	Heartbeat  Heartbeat       `yaml:"heartbeat"`
	Metrics    Metrics         `yaml:"metrics"`
	Governance Governance      `yaml:"governance"`
	// Control connects the host to its fleet (etcd); absent, the host runs
	// standalone on this file alone. Its host, labels and state_dir default
	// to the ones above.
	Control *control.Config `yaml:"control"`
	// Server is the HTTPS link to vigil-server (artifact downloads,
	// inventory upload); absent, nothing is sent to or fetched from it.
	Server *Server `yaml:"server"`
	// Update installs signed plugin releases the fleet asks for (see
	// update.go); absent, desired plugin versions are refused.
	Update *Update `yaml:"update"`
}

// Plugin is one plugin to run.
type Plugin struct {
	Name string `yaml:"name"`
	Path string `yaml:"path"`
	// SHA256 pins the binary; empty: whatever is at Path is run.
	SHA256 string `yaml:"sha256"`
	// Enabled defaults to true.
	Enabled  *bool  `yaml:"enabled"`
	LogLevel string `yaml:"log_level"`
	// Config is the plugin's own config; only the keys that differ from
	// the plugin's defaults need to be written.
	Config map[string]any `yaml:"config"`
}

// Supervisor tunes plugin supervision.
type Supervisor struct {
	StartTimeout    time.Duration `yaml:"start_timeout"`
	CallTimeout     time.Duration `yaml:"call_timeout"`
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	BackoffInitial  time.Duration `yaml:"backoff_initial"`
	BackoffMax      time.Duration `yaml:"backoff_max"`
	YoungAge        time.Duration `yaml:"young_age"`
	QuarantineAfter int           `yaml:"quarantine_after"`
}

// Governance puts each plugin in its own cgroup behind a circuit breaker,
// and the whole agent behind the original design's rule.
type Governance struct {
	// Cgroups gives each plugin a cgroup with hard CPU and memory limits;
	// false, or cgroups unusable, leaves breakers alone.
	Cgroups      bool   `yaml:"cgroups"`
	CgroupParent string `yaml:"cgroup_parent"`
	// Interval is the sampling period; Profile the limits table row
	// (normal or strict).
	Interval time.Duration `yaml:"interval"`
	Profile  string        `yaml:"profile"`
	// AgentCPUPercent of one core, for AgentSamples samples in a row,
	// stops every plugin until the next check window.
	AgentCPUPercent float64 `yaml:"agent_cpu_percent"`
	AgentSamples    int     `yaml:"agent_samples"`
	// Plugins overrides limits by plugin name, e.g.
	// procmon: {cpu_percent: 8, quota_memory_bytes: 104857600}.
	Plugins map[string]map[string]any `yaml:"plugins"`
}

// Sinks says where events go.
type Sinks struct {
	// File is the NDJSON file rotated as two files of a fixed size (the
	// default); "file: null" turns it off.
	File   *sink.FileConfig `yaml:"file"`
	Stdout bool             `yaml:"stdout"`
	// Kafka produces events to a Kafka topic, one record per event keyed
	// by the host name.
	Kafka *sink.KafkaConfig `yaml:"kafka"`
	// Server sends events to vigil-server's ingest API (POST /v1/events)
	// through the server section's URL and TLS client.
	Server *sink.ServerConfig `yaml:"server"`
}

// Heartbeat sets how often the host reports its health as an event.
type Heartbeat struct {
	Interval time.Duration `yaml:"interval"`
}

// Metrics optionally serves Prometheus metrics on a local address.
type Metrics struct {
	Listen string `yaml:"listen"`
}

// Default returns the defaults every absent key takes.
func Default() Config {
	host, _ := os.Hostname()
	return Config{
		HostName: host,
		StateDir: "/var/lib/vigil",
		RunDir:   "/run/vigil",
		Log:      logging.Config{Level: logging.DefaultLevel, MaxSizeMB: logging.DefaultMaxSizeMB, Stderr: true},
		Supervisor: Supervisor{
			StartTimeout:    10 * time.Second,
			CallTimeout:     10 * time.Second,
			ShutdownTimeout: 5 * time.Second,
			BackoffInitial:  250 * time.Millisecond,
			BackoffMax:      5 * time.Minute,
			YoungAge:        30 * time.Second,
			QuarantineAfter: 5,
		},
		Pipeline:  pipeline.Config{}.WithDefaults(),
		Sinks:     Sinks{File: &sink.FileConfig{Path: sink.DefaultFilePath, MaxSizeMB: sink.DefaultFileMaxSizeMB}},
		Heartbeat: Heartbeat{Interval: time.Minute},
		Governance: Governance{
			Cgroups: true, CgroupParent: "vigil", Interval: 3 * time.Second, Profile: "normal",
			AgentCPUPercent: 5, AgentSamples: 4,
		},
	}
}

// Load reads and validates the config file at path.
func Load(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("host config: %w", err)
	}
	defer f.Close()
	cfg, err := Parse(f)
	if err != nil {
		return Config{}, fmt.Errorf("host config %s: %w", path, err)
	}
	return cfg, nil
}

var yamlType = regexp.MustCompile(` not found in type [\w.]+`)

// Parse decodes a config strictly over Default and validates it.
func Parse(r io.Reader) (Config, error) {
	cfg := Default()
	data, err := io.ReadAll(io.LimitReader(r, 4<<20))
	if err != nil {
		return cfg, err
	}
	if len(bytes.TrimSpace(data)) > 0 {
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
			msg := yamlType.ReplaceAllString(err.Error(), " is not a known key")
			msg = strings.ReplaceAll(msg, "yaml: unmarshal errors:\n  ", "")
			return cfg, errors.New(strings.ReplaceAll(msg, "\n  ", "; "))
		}
	}
	return cfg, cfg.Validate()
}

var pluginLevels = []string{"", "trace", "debug", "info", "warn", "error"}

func oneOf(v string, allowed []string) bool {
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	return false
}

// Validate checks every key; it is pure.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if !api.ValidName(c.HostName) {
		bad("host_name must be 1-253 letters, digits, '.', '-' or '_' (got %q)", c.HostName)
	}
	for k, v := range c.Labels {
		if !api.ValidName(k) || !api.ValidName(v) {
			bad("labels.%s must be a name of letters, digits, '.', '-' or '_' (got %q=%q)", k, k, v)
		}
	}
	if c.StateDir == "" {
		bad("state_dir must be set")
	}
	if c.RunDir == "" {
		bad("run_dir must be set")
	}
	if err := c.Log.Validate(); err != nil {
		errs = append(errs, err)
	}
	seen := map[string]bool{}
	for i, p := range c.Plugins {
		key := fmt.Sprintf("plugins[%d]", i)
		switch {
		case !api.ValidName(p.Name):
			bad("%s.name must be a name of letters, digits, '.', '-' or '_' (got %q)", key, p.Name)
		case p.Name == api.HostReleaseName:
			bad("%s.name %q is vigil-host's own release name and cannot name a plugin", key, p.Name)
		case seen[p.Name]:
			bad("%s.name %q is listed twice", key, p.Name)
		}
		seen[p.Name] = true
		if p.Path == "" {
			bad("%s.path must name the plugin binary (plugin %q)", key, p.Name)
		}
		if p.SHA256 != "" && !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(p.SHA256) {
			bad("%s.sha256 must be 64 lower-case hex digits (got %q)", key, p.SHA256)
		}
		if !oneOf(p.LogLevel, pluginLevels) {
			bad("%s.log_level must be one of trace, debug, info, warn, error (got %q)", key, p.LogLevel)
		}
		if _, err := json.Marshal(p.Config); err != nil {
			bad("%s.config cannot be expressed as JSON: %v", key, err)
		}
	}
	s := c.Supervisor
	durs := []struct {
		key       string
		v, lo, hi time.Duration
	}{
		{"supervisor.start_timeout", s.StartTimeout, time.Second, 5 * time.Minute},
		{"supervisor.call_timeout", s.CallTimeout, 100 * time.Millisecond, 5 * time.Minute},
		{"supervisor.shutdown_timeout", s.ShutdownTimeout, 100 * time.Millisecond, 5 * time.Minute},
		{"supervisor.backoff_initial", s.BackoffInitial, 10 * time.Millisecond, time.Minute},
		{"supervisor.backoff_max", s.BackoffMax, 100 * time.Millisecond, time.Hour},
		{"supervisor.young_age", s.YoungAge, time.Second, time.Hour},
		{"heartbeat.interval", c.Heartbeat.Interval, time.Second, time.Hour},
	}
	for _, d := range durs {
		if d.v < d.lo || d.v > d.hi {
			bad("%s must be between %s and %s (got %s)", d.key, d.lo, d.hi, d.v)
		}
	}
	if s.BackoffMax < s.BackoffInitial {
		bad("supervisor.backoff_max must be at least supervisor.backoff_initial (got %s < %s)", s.BackoffMax, s.BackoffInitial)
	}
	g := c.Governance
	if g.Interval < 100*time.Millisecond || g.Interval > 10*time.Minute {
		bad("governance.interval must be between 100ms and 10m0s (got %s)", g.Interval)
	}
	if g.Profile != "normal" && g.Profile != "strict" {
		bad("governance.profile must be one of normal, strict (got %q)", g.Profile)
	}
	if g.AgentCPUPercent < 0.1 || g.AgentCPUPercent > 400 {
		bad("governance.agent_cpu_percent must be between 0.1 and 400 (got %g)", g.AgentCPUPercent)
	}
	if g.AgentSamples < 1 || g.AgentSamples > 100 {
		bad("governance.agent_samples must be between 1 and 100 (got %d)", g.AgentSamples)
	}
	if g.Cgroups && g.CgroupParent == "" {
		bad("governance.cgroup_parent must be set when governance.cgroups is true")
	}
	if s.QuarantineAfter < 1 || s.QuarantineAfter > 100 {
		bad("supervisor.quarantine_after must be between 1 and 100 (got %d)", s.QuarantineAfter)
	}
	if c.Server != nil {
		errs = append(errs, c.Server.validate()...)
	}
	errs = append(errs, c.validateUpdate()...)
	if c.Control != nil {
		if err := c.ControlConfig("").Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.Pipeline.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Sinks.File != nil {
		if c.Sinks.File.Path == "" {
			bad("sinks.file.path must be set (or write \"file: null\" to turn the file sink off)")
		}
		if err := c.Sinks.File.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Sinks.Server != nil {
		if c.Server == nil {
			bad("sinks.server needs the server section (server.url and its TLS files)")
		}
		if err := c.Sinks.Server.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Sinks.Kafka != nil {
		if err := c.Sinks.Kafka.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Sinks.File == nil && !c.Sinks.Stdout && c.Sinks.Kafka == nil && c.Sinks.Server == nil {
		bad("sinks: set sinks.file, sinks.stdout: true, sinks.kafka or sinks.server, or events have nowhere to go")
	}
	return errors.Join(errs...)
}

// ControlConfig returns the control section with the host's name, labels,
// state dir and version filled in where it leaves them empty.
func (c Config) ControlConfig(version string) control.Config {
	cc := *c.Control
	if cc.Host == "" {
		cc.Host = c.HostName
	}
	if cc.Labels == nil {
		cc.Labels = c.Labels
	}
	if cc.StateDir == "" {
		cc.StateDir = c.StateDir
	}
	cc.Version = version
	return cc
}

// PluginConfigJSON returns a plugin's config as JSON (nil when absent).
func (p Plugin) PluginConfigJSON() json.RawMessage {
	if len(p.Config) == 0 {
		return nil
	}
	b, _ := json.Marshal(p.Config)
	return b
}

// IsEnabled reports the plugin's enabled flag, true by default.
func (p Plugin) IsEnabled() bool { return p.Enabled == nil || *p.Enabled }
