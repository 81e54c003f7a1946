package pipeline

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Config bounds what each plugin may push through the host. Zero fields
// take the defaults below; Plugins overrides them per plugin name (zero
// fields of an override inherit the values above them).
type Config struct {
	Limits `yaml:",inline"`
	// CloseTimeout is how long Close spends writing queued events to the
	// sinks before it counts the rest as dropped (reason "shutdown").
	CloseTimeout time.Duration `yaml:"close_timeout" json:"close_timeout"`
	// Plugins holds per-plugin overrides, by plugin name.
	Plugins map[string]Limits `yaml:"plugins" json:"plugins"`
}

// Limits are one plugin's queue and rate limits.
type Limits struct {
	// QueueSize is the most events (telemetry and alerts together) the
	// host holds for the plugin before dropping (reason "queue_full").
	QueueSize int `yaml:"queue_size" json:"queue_size"`
	// Rate is the telemetry token bucket's refill, in events per second;
	// events over it are dropped (reason "rate_limited").
	Rate int `yaml:"rate" json:"rate"`
	// Burst is the telemetry token bucket's size, in events.
	Burst int `yaml:"burst" json:"burst"`
	// AlertRate and AlertBurst are the alerts' own, generous bucket:
	// alerts are never charged to the telemetry limit.
	AlertRate  int `yaml:"alert_rate" json:"alert_rate"`
	AlertBurst int `yaml:"alert_burst" json:"alert_burst"`
}

// Defaults and bounds. The queue default is the original design's "queue
// of fixed length, drop what does not fit"; 65536 events of a few hundred
// bytes is tens of MiB at worst per plugin.
const (
	DefaultQueueSize    = 65536
	DefaultRate         = 20000
	DefaultBurst        = 40000
	DefaultAlertRate    = 5000
	DefaultAlertBurst   = 50000
	DefaultCloseTimeout = 5 * time.Second

	MinQueueSize    = 1024
	MaxQueueSize    = 1 << 24
	MinRate         = 1
	MaxRate         = 10_000_000
	MinBurst        = 1
	MaxBurst        = 100_000_000
	MinCloseTimeout = 10 * time.Millisecond
	MaxCloseTimeout = 5 * time.Minute
)

// DefaultLimits are the limits of a plugin with no override.
var DefaultLimits = Limits{
	QueueSize:  DefaultQueueSize,
	Rate:       DefaultRate,
	Burst:      DefaultBurst,
	AlertRate:  DefaultAlertRate,
	AlertBurst: DefaultAlertBurst,
}

// over returns l with its zero fields taken from base.
func (l Limits) over(base Limits) Limits {
	pick := func(v, d int) int {
		if v == 0 {
			return d
		}
		return v
	}
	return Limits{
		QueueSize:  pick(l.QueueSize, base.QueueSize),
		Rate:       pick(l.Rate, base.Rate),
		Burst:      pick(l.Burst, base.Burst),
		AlertRate:  pick(l.AlertRate, base.AlertRate),
		AlertBurst: pick(l.AlertBurst, base.AlertBurst),
	}
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	c.Limits = c.Limits.over(DefaultLimits)
	if c.CloseTimeout == 0 {
		c.CloseTimeout = DefaultCloseTimeout
	}
	return c
}

// For returns the effective limits of the named plugin.
func (c Config) For(plugin string) Limits {
	c = c.WithDefaults()
	if o, ok := c.Plugins[plugin]; ok {
		return o.over(c.Limits)
	}
	return c.Limits
}

// Validate reports every out-of-range value, naming the key as written.
func (c Config) Validate() error {
	c = c.WithDefaults()
	var errs []error
	errs = c.Limits.validate("pipeline.", errs)
	if c.CloseTimeout < MinCloseTimeout || c.CloseTimeout > MaxCloseTimeout {
		errs = append(errs, fmt.Errorf("pipeline.close_timeout must be between %s and %s (got %s)", MinCloseTimeout, MaxCloseTimeout, c.CloseTimeout))
	}
	for _, name := range slices.Sorted(maps.Keys(c.Plugins)) {
		if name == "" {
			errs = append(errs, errors.New(`pipeline.plugins must not have an empty plugin name (got "")`))
			continue
		}
		errs = c.Plugins[name].over(c.Limits).validate("pipeline.plugins."+name+".", errs)
	}
	return errors.Join(errs...)
}

func (l Limits) validate(prefix string, errs []error) []error {
	check := func(key string, v, lo, hi int) {
		if v < lo || v > hi {
			errs = append(errs, fmt.Errorf("%s%s must be between %d and %d (got %d)", prefix, key, lo, hi, v))
		}
	}
	check("queue_size", l.QueueSize, MinQueueSize, MaxQueueSize)
	check("rate", l.Rate, MinRate, MaxRate)
	check("burst", l.Burst, MinBurst, MaxBurst)
	check("alert_rate", l.AlertRate, MinRate, MaxRate)
	check("alert_burst", l.AlertBurst, MinBurst, MaxBurst)
	return errs
}
