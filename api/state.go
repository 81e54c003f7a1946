package api

import (
	"encoding/json"
	"time"
)

// DesiredState is one scope's desired-state document. Every field is
// optional: an unset field inherits from the wider scope. The effective
// state of a host is Merge(fleet, groups..., host).
type DesiredState struct {
	// Stop stops every plugin while set; the host keeps its lease and
	// watches so that it can be resumed (the emergency stop).
	Stop *bool `json:"stop,omitempty"`
	// LogLevel is the host's log level (syslog names: emergency ... debug).
	LogLevel string `json:"log_level,omitempty"`
	// Plugins maps a plugin name to its desired state.
	Plugins map[string]PluginState `json:"plugins,omitempty"`
	// Tasks are one-shot tasks, run once per host.
	Tasks []Task `json:"tasks,omitempty"`
	// HostVersion is the signed vigil-host release to run
	// (/hids/releases/vigil-host/{version}/{os}/{arch}); HostRollout limits it to a
	// share of the hosts.
	HostVersion string   `json:"host_version,omitempty"`
	HostRollout *Rollout `json:"host_rollout,omitempty"`
}

// PluginState is the desired state of one plugin.
type PluginState struct {
	// Enabled runs (true) or stops (false) the plugin.
	Enabled *bool `json:"enabled,omitempty"`
	// Version is the signed release version to run
	// (/hids/releases/{plugin}/{version}/{os}/{arch}); empty keeps the installed one.
	Version string `json:"version,omitempty"`
	// Rollout limits Version to a share of the hosts; it is replaced
	// together with Version by a narrower scope.
	Rollout *Rollout `json:"rollout,omitempty"`
	// Config is the plugin's JSON config; objects merge key by key across
	// scopes, anything else replaces.
	Config json.RawMessage `json:"config,omitempty"`
	// LogLevel is the plugin's log level.
	LogLevel string `json:"log_level,omitempty"`
	// Limits overrides the plugin's resource limits (breaker thresholds
	// and cgroup quotas), e.g. {"profile":"strict"} or {"cpu_percent":3}.
	Limits json.RawMessage `json:"limits,omitempty"`
}

// Task is a one-shot piece of work for a plugin. The host runs each ID at
// most once, at a moment within Spread chosen by a hash of its name, so a
// fleet-wide task does not fire everywhere at once.
type Task struct {
	ID     string          `json:"id"`
	Plugin string          `json:"plugin"`
	Name   string          `json:"name"`
	Args   json.RawMessage `json:"args,omitempty"`
	Spread Duration        `json:"spread,omitempty"`
}

// Document is the value stored at a scope's desired-state key: the state
// plus who changed it, when and why.
type Document struct {
	Scope   string       `json:"scope"`
	Seq     int64        `json:"seq"`
	Author  string       `json:"author"`
	Time    time.Time    `json:"time"`
	Comment string       `json:"comment,omitempty"`
	State   DesiredState `json:"state"`
}

// Registration is the value of a host's registration key.
type Registration struct {
	Host    string `json:"host"`
	Version string `json:"version"`
	// OS and Arch are the host's platform (runtime.GOOS and GOARCH of
	// vigil-host): rollout set counts the hosts it targets by platform and
	// warns about those a version is not published for. Empty from agents
	// older than the field (an unknown platform).
	OS        string            `json:"os,omitempty"`
	Arch      string            `json:"arch,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	StartedAt time.Time         `json:"started_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	// Applied is the desired-state revision the host has applied.
	Applied Applied `json:"applied"`
	// Stopped is true while the emergency stop is in force on the host.
	Stopped bool                    `json:"stopped"`
	Plugins map[string]PluginStatus `json:"plugins,omitempty"`
	// Instance identifies the agent process holding the name, so that a
	// second host is refused with a message naming the holder and a
	// restarted host can reclaim its own key while the old lease lives.
	Instance Instance `json:"instance"`
	// Tasks are the results of the most recent one-shot tasks, newest last.
	Tasks []TaskResult `json:"tasks,omitempty"`
	// HostUpdate is the state of the latest vigil-host self-update.
	HostUpdate *UpdateStatus `json:"host_update,omitempty"`
	// Keyring is the release keyring the host verifies releases with;
	// nil with pinned release keys or no update section.
	Keyring *KeyringStatus `json:"keyring,omitempty"`
}

// Applied acknowledges a desired-state revision.
type Applied struct {
	// Revision is the etcd revision of the newest desired state applied.
	Revision int64     `json:"revision"`
	At       time.Time `json:"at"`
	// Error is why (part of) that state was rejected; empty if none.
	Error string `json:"error,omitempty"`
}

// PluginStatus is one plugin's state as the host reports it.
type PluginStatus struct {
	Version   string `json:"version,omitempty"`
	State     string `json:"state"`
	LastError string `json:"last_error,omitempty"`
	Restarts  int    `json:"restarts,omitempty"`
	Breaker   string `json:"breaker,omitempty"`
	// Update is the state of the latest release install for the plugin.
	Update *UpdateStatus `json:"update,omitempty"`
}

// Duration is a time.Duration written as a Go duration string.
type Duration time.Duration

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
