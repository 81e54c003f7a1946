package desired

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/coreos/go-semver/semver"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/limits"
)

// PluginValidator checks one plugin's config with the plugin's own rules;
// it returns an error for a plugin it does not know. plugins/catalog.Validate
// has this signature.
type PluginValidator func(plugin string, raw json.RawMessage) error

// LogLevels are the accepted log levels (syslog names).
var LogLevels = []string{"emergency", "alert", "critical", "error", "warning", "notice", "info", "debug"}

// MaxSpread is the longest window a one-shot task may be spread over.
const MaxSpread = 24 * time.Hour

// Check validates a parsed document: log levels, plugin names, each plugin's
// config through validate and its limit overrides, and one-shot tasks. Every problem is reported,
// joined, each wrapped in ErrInvalid.
func Check(st api.DesiredState, validate PluginValidator) error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...))
	}
	if st.LogLevel != "" && !validLevel(st.LogLevel) {
		bad("log_level must be one of %v (got %q)", LogLevels, st.LogLevel)
	}
	names := make([]string, 0, len(st.Plugins))
	for name := range st.Plugins {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p := st.Plugins[name]
		if !api.ValidName(name) {
			bad("plugins: %q is not a valid plugin name", name)
			continue
		}
		if name == api.HostReleaseName {
			bad("plugins: %q is vigil-host's own release name, not a plugin (set host_version to update the host)", name)
			continue
		}
		if p.LogLevel != "" && !validLevel(p.LogLevel) {
			bad("plugins.%s.log_level must be one of %v (got %q)", name, LogLevels, p.LogLevel)
		}
		for _, err := range CheckVersion("plugins."+name, p.Version, p.Rollout) {
			bad("%s", err)
		}
		if err := checkLimits(name, p.Limits); err != nil {
			bad("%w", err)
		}
		if versionOnly(p) {
			// A rollout of a signed release: nothing for the catalog to
			// check, and the plugin may be one the server was not built
			// with.
			continue
		}
		if validate == nil {
			bad("plugins.%s: no plugin catalog to check it against", name)
			continue
		}
		if err := validate(name, p.Config); err != nil {
			bad("plugins.%s: %w", name, err)
		}
	}
	for _, err := range CheckVersion("host", st.HostVersion, st.HostRollout) {
		bad("%s", err)
	}
	seen := map[string]bool{}
	for i, t := range st.Tasks {
		at := fmt.Sprintf("tasks[%d]", i)
		switch {
		case t.ID == "":
			bad("%s.id is required", at)
		case seen[t.ID]:
			bad("%s.id %q is used twice", at, t.ID)
		}
		seen[t.ID] = true
		if t.Name == "" {
			bad("%s.name is required", at)
		}
		if !api.ValidName(t.Plugin) {
			bad("%s.plugin %q is not a valid plugin name", at, t.Plugin)
		} else if validate != nil {
			if err := validate(t.Plugin, nil); err != nil {
				bad("%s.plugin: %w", at, err)
			}
		}
		if s := time.Duration(t.Spread); s < 0 || s > MaxSpread {
			bad("%s.spread must be between 0s and %s (got %s)", at, MaxSpread, s)
		}
	}
	return errors.Join(errs...)
}

func validLevel(s string) bool {
	for _, l := range LogLevels {
		if s == l {
			return true
		}
	}
	return false
}

// DefaultMaxRequestBytes is etcd's default request limit (--max-request-bytes).
const DefaultMaxRequestBytes = 1536 * 1024

// ErrTooLarge is returned when a write would exceed etcd's request limit.
var ErrTooLarge = errors.New("desired: document too large")

// requestOverhead covers the Txn framing, compares and key bytes beyond the
// two values (measured well below 1 KiB; kept generous).
const requestOverhead = 4096

// CheckSize refuses a write whose etcd request (the document at the scope
// key plus the same document in the history record, one Txn) would exceed
// limit bytes, before anything is sent.
func CheckSize(docBytes, historyBytes, limit int) error {
	if limit <= 0 {
		limit = DefaultMaxRequestBytes
	}
	if n := docBytes + historyBytes + requestOverhead; n > limit {
		return fmt.Errorf("%w: the write carries the document twice (scope key and history record), %d bytes in all, "+
			"over etcd's request limit of %d bytes (--max-request-bytes); the document itself may be at most %d bytes (got %d)",
			ErrTooLarge, n, limit, (limit-requestOverhead)/2, docBytes)
	}
	return nil
}

// checkLimits checks a plugin's limit overrides with the rules the host's
// breaker applies (internal/limits): known keys of the right type, and the
// profile they name (or the default one) with them applied in range. A host
// configured with the other profile checks them again against its own, and
// refuses them by name if they do not fit it.
func checkLimits(plugin string, raw json.RawMessage) error {
	if len(raw) == 0 {
		return nil
	}
	at := "plugins." + plugin + ".limits"
	var o limits.Overrides
	if err := o.Overlay(raw); err != nil {
		return fmt.Errorf("%s: %w", at, err)
	}
	_, err := o.Resolve(limits.DefaultProfile, at)
	return err
}

// versionOnly reports whether a plugin entry sets a version (and rollout)
// and nothing else.
func versionOnly(p api.PluginState) bool {
	return p.Version != "" && p.Enabled == nil && len(p.Config) == 0 && p.LogLevel == "" && len(p.Limits) == 0
}

// CheckVersion checks a desired release version and its rollout: the
// version is semver (as release manifests are), the percent 1..100, the
// rollout's from version semver too, and a rollout needs a version. at is
// the key prefix the messages name ("plugins.procmon" or "host").
func CheckVersion(at, version string, r *api.Rollout) []string {
	vkey, rkey := at+".version", at+".rollout"
	if at == "host" {
		vkey, rkey = "host_version", "host_rollout"
	}
	var errs []string
	if version != "" {
		if _, err := semver.NewVersion(version); err != nil {
			errs = append(errs, fmt.Sprintf("%s must be a semver version MAJOR.MINOR.PATCH (got %q)", vkey, version))
		}
	}
	if r == nil {
		return errs
	}
	if version == "" {
		errs = append(errs, fmt.Sprintf("%s needs %s (a rollout of which version?)", rkey, vkey))
	}
	if r.Percent < 1 || r.Percent > 100 {
		errs = append(errs, fmt.Sprintf("%s.percent must be between 1 and 100 (got %d)", rkey, r.Percent))
	}
	if r.From != "" {
		if _, err := semver.NewVersion(r.From); err != nil {
			errs = append(errs, fmt.Sprintf("%s.from must be a semver version MAJOR.MINOR.PATCH (got %q)", rkey, r.From))
		}
	}
	return errs
}
