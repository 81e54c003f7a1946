// Package limits is the one table of plugin resource limits (a normal and
// a strict profile) and the overrides of it that travel in the desired
// state. The host's breakers and cgroups enforce them (host/breaker); the
// server checks overrides against the same rules before it writes them.
package limits

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/vigil-hids/vigil/api"
)

// Limits are the thresholds one breaker watches, plus the hard limits the
// kernel enforces through the plugin's cgroup where cgroups are available.
// The zero value of a field means "take it from the profile" when Limits are
// built with Overrides.Apply.
type Limits struct {
	// CPUPercent is the sustained CPU use, in percent of one core, at or
	// above which a sample counts against the plugin.
	CPUPercent float64
	// MemoryBytes is the resident memory at or above which a sample counts.
	MemoryBytes uint64
	// FloodEvents is how many rate-limited events one sample may carry
	// before it counts as a flood sample: the host's token bucket has
	// already throttled the plugin, and a plugin that keeps hitting it
	// trips like one that keeps burning CPU.
	FloodEvents uint64
	// Samples is N: this many consecutive samples over one limit trip the
	// breaker. Samples × the governor's interval is the time to trip.
	Samples int
	// Cooldown is how long the plugin stays stopped after its first trip;
	// each further trip doubles it, up to MaxCooldown.
	Cooldown    time.Duration
	MaxCooldown time.Duration
	// HealthyWindow is how long a plugin restarted after a cooldown
	// (half-open) must stay under its limits for the breaker to close.
	HealthyWindow time.Duration
	// ForgetAfter is how long a closed breaker must stay closed for the
	// cooldown to fall back to Cooldown on the next trip.
	ForgetAfter time.Duration

	// QuotaCPUPercent and QuotaMemoryBytes are the cgroup's hard limits
	// (CPU quota in percent of one core, memory limit). They sit above the
	// breaker thresholds so that a plugin in trouble is seen by its breaker,
	// with a reason, before the kernel throttles or OOM-kills it.
	QuotaCPUPercent  float64
	QuotaMemoryBytes uint64
	// Pids caps the processes and threads in the plugin's cgroup.
	Pids uint64
}

// Profile names.
const (
	ProfileNormal = "normal"
	ProfileStrict = "strict"
)

// DefaultProfile is used when the configuration names none.
const DefaultProfile = ProfileNormal

const mib = 1 << 20

// profiles is the one table of limits. The anchor is osquery's watchdog:
// check every 3 s, trip when a limit is exceeded for 12 s (4 samples),
// 200 MB and 10% of a core normally, 100 MB and 5% when restrictive, a
// respawn delay that grows to 600 s. The cgroup hard limits sit at twice
// the breaker thresholds.
var profiles = map[string]Limits{
	ProfileNormal: {
		CPUPercent:       10,
		MemoryBytes:      200 * mib,
		FloodEvents:      0,
		Samples:          4,
		Cooldown:         15 * time.Second,
		MaxCooldown:      600 * time.Second,
		HealthyWindow:    60 * time.Second,
		ForgetAfter:      600 * time.Second,
		QuotaCPUPercent:  20,
		QuotaMemoryBytes: 400 * mib,
		Pids:             256,
	},
	ProfileStrict: {
		CPUPercent:       5,
		MemoryBytes:      100 * mib,
		FloodEvents:      0,
		Samples:          4,
		Cooldown:         30 * time.Second,
		MaxCooldown:      600 * time.Second,
		HealthyWindow:    120 * time.Second,
		ForgetAfter:      1200 * time.Second,
		QuotaCPUPercent:  10,
		QuotaMemoryBytes: 200 * mib,
		Pids:             128,
	},
}

// ErrUnknownProfile is returned for a profile name not in the table.
var ErrUnknownProfile = errors.New("unknown profile")

// Profile returns the limits of a named profile ("" means DefaultProfile).
func Profile(name string) (Limits, error) {
	if name == "" {
		name = DefaultProfile
	}
	l, ok := profiles[name]
	if !ok {
		return Limits{}, fmt.Errorf("%w %q (want %s or %s)", ErrUnknownProfile, name, ProfileNormal, ProfileStrict)
	}
	return l, nil
}

// Profiles returns the names of the profiles in the table.
func Profiles() []string { return []string{ProfileNormal, ProfileStrict} }

// Validate checks every field and returns all problems, each naming the key
// under prefix (e.g. "limits.procmon").
func (l Limits) Validate(prefix string) error {
	var errs []error
	key := func(k string) string {
		if prefix == "" {
			return k
		}
		return prefix + "." + k
	}
	if l.CPUPercent < 0.1 || l.CPUPercent > 400 {
		errs = append(errs, fmt.Errorf("%s must be between 0.1 and 400 (got %g)", key("cpu_percent"), l.CPUPercent))
	}
	if l.MemoryBytes < 4*mib {
		errs = append(errs, fmt.Errorf("%s must be at least %d (got %d)", key("memory_bytes"), 4*mib, l.MemoryBytes))
	}
	if l.Samples < 1 || l.Samples > 100 {
		errs = append(errs, fmt.Errorf("%s must be between 1 and 100 (got %d)", key("samples"), l.Samples))
	}
	if l.Cooldown < time.Second || l.Cooldown > time.Hour {
		errs = append(errs, fmt.Errorf("%s must be between 1s and 1h (got %s)", key("cooldown"), l.Cooldown))
	}
	if l.MaxCooldown < l.Cooldown || l.MaxCooldown > 24*time.Hour {
		errs = append(errs, fmt.Errorf("%s must be between cooldown (%s) and 24h (got %s)", key("max_cooldown"), l.Cooldown, l.MaxCooldown))
	}
	if l.HealthyWindow < 0 || l.HealthyWindow > time.Hour {
		errs = append(errs, fmt.Errorf("%s must be between 0s and 1h (got %s)", key("healthy_window"), l.HealthyWindow))
	}
	if l.ForgetAfter < 0 || l.ForgetAfter > 7*24*time.Hour {
		errs = append(errs, fmt.Errorf("%s must be between 0s and 168h (got %s)", key("forget_after"), l.ForgetAfter))
	}
	if l.QuotaCPUPercent != 0 && (l.QuotaCPUPercent < l.CPUPercent || l.QuotaCPUPercent > 400) {
		errs = append(errs, fmt.Errorf("%s must be 0 (none) or between cpu_percent (%g) and 400 (got %g)", key("quota_cpu_percent"), l.CPUPercent, l.QuotaCPUPercent))
	}
	if l.QuotaMemoryBytes != 0 && l.QuotaMemoryBytes < l.MemoryBytes {
		errs = append(errs, fmt.Errorf("%s must be 0 (none) or at least memory_bytes (%d) (got %d)", key("quota_memory_bytes"), l.MemoryBytes, l.QuotaMemoryBytes))
	}
	if l.Pids != 0 && l.Pids < 8 {
		errs = append(errs, fmt.Errorf("%s must be 0 (none) or at least 8 (got %d)", key("pids"), l.Pids))
	}
	return errors.Join(errs...)
}

// Overrides change some limits of a profile for one plugin; a nil field
// keeps the profile's value. They are meant to travel in the desired state,
// so the server can tighten a plugin fleet-wide.
type Overrides struct {
	Profile          string        `json:"profile,omitempty"`
	CPUPercent       *float64      `json:"cpu_percent,omitempty"`
	MemoryBytes      *uint64       `json:"memory_bytes,omitempty"`
	FloodEvents      *uint64       `json:"flood_events,omitempty"`
	Samples          *int          `json:"samples,omitempty"`
	Cooldown         *api.Duration `json:"cooldown,omitempty"`
	MaxCooldown      *api.Duration `json:"max_cooldown,omitempty"`
	HealthyWindow    *api.Duration `json:"healthy_window,omitempty"`
	QuotaCPUPercent  *float64      `json:"quota_cpu_percent,omitempty"`
	QuotaMemoryBytes *uint64       `json:"quota_memory_bytes,omitempty"`
	Pids             *uint64       `json:"pids,omitempty"`
}

// Resolve returns the limits of o.Profile (or of profile, when o names
// none) with o's fields applied, and validates the result under prefix.
// When a threshold is overridden but its hard limit is not, the hard limit
// follows at twice the threshold, as in the table.
func (o Overrides) Resolve(profile, prefix string) (Limits, error) {
	if o.Profile != "" {
		profile = o.Profile
	}
	l, err := Profile(profile)
	if err != nil {
		return Limits{}, fmt.Errorf("%s.profile: %w", prefix, err)
	}
	if o.CPUPercent != nil {
		l.CPUPercent = *o.CPUPercent
		l.QuotaCPUPercent = 2 * l.CPUPercent
	}
	if o.MemoryBytes != nil {
		l.MemoryBytes = *o.MemoryBytes
		l.QuotaMemoryBytes = 2 * l.MemoryBytes
	}
	set(&l.FloodEvents, o.FloodEvents)
	set(&l.Samples, o.Samples)
	setDuration(&l.Cooldown, o.Cooldown)
	setDuration(&l.MaxCooldown, o.MaxCooldown)
	setDuration(&l.HealthyWindow, o.HealthyWindow)
	set(&l.QuotaCPUPercent, o.QuotaCPUPercent)
	set(&l.QuotaMemoryBytes, o.QuotaMemoryBytes)
	set(&l.Pids, o.Pids)
	return l, l.Validate(prefix)
}

func set[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

func setDuration(dst *time.Duration, v *api.Duration) {
	if v != nil {
		*dst = time.Duration(*v)
	}
}

// Overlay decodes raw onto o strictly: the keys present replace o's
// fields; an unknown key, a value of the wrong type or anything after the
// object is an error (o may then be partly changed). Empty input changes
// nothing.
func (o *Overrides) Overlay(raw json.RawMessage) error {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(o); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("unexpected data after the object")
	}
	return nil
}
