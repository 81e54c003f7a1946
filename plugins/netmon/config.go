package netmon

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/vigil-hids/vigil/sdk"
)

// Config is netmon's configuration. Zero values are never used: the SDK
// decodes the host's JSON over DefaultConfig.
type Config struct {
	// Interval is the time between snapshots.
	Interval sdk.Duration `json:"interval" vigil:"min=1s,max=1h" desc:"time between socket snapshots"`
	// MaxInterval caps how far the plugin stretches the interval when a
	// snapshot costs more CPU than CPUPercent allows.
	MaxInterval sdk.Duration `json:"max_interval" vigil:"min=1s,max=24h" desc:"longest interval when slowed down by the CPU budget"`
	// CPUPercent is the average CPU share of one core the snapshots may use.
	CPUPercent float64 `json:"cpu_percent" vigil:"min=0.1,max=100" desc:"average CPU share of one core the snapshots may use, in percent"`
	// SnapshotBudget is the most CPU time one snapshot may use; a snapshot
	// that reaches it stops early and is reported as truncated.
	SnapshotBudget sdk.Duration `json:"snapshot_budget" vigil:"min=10ms,max=1m" desc:"most CPU time one snapshot may use"`
	// AttributionFDs is the most fd links read per snapshot to attribute
	// sockets to processes; 0 turns attribution off.
	AttributionFDs int `json:"attribution_fds" vigil:"min=0,max=10000000" desc:"most /proc fd links read per snapshot for process attribution (0: off)"`
	// UDP includes UDP sockets.
	UDP bool `json:"udp" desc:"watch UDP sockets as well as TCP"`
	// SkipTimeWait leaves TIME_WAIT and SYN_RECV request sockets out of
	// the dump. They belong to no process and netmon reports nothing about
	// them, but a busy server can hold several times more of them than of
	// established connections, and the kernel's time to dump them counts
	// against the snapshot budget.
	SkipTimeWait bool `json:"skip_time_wait" desc:"leave TIME_WAIT and request sockets out of the TCP dump"`
	// AllNamespaces dumps the sockets of every network namespace a
	// process is in (containers), not only the plugin's own.
	AllNamespaces bool `json:"all_namespaces" desc:"watch the sockets of every network namespace on the host (containers), not only the plugin's own"`
	// LearningPeriod is how long after start listeners are learned as the
	// baseline instead of alerting.
	LearningPeriod sdk.Duration `json:"learning_period" vigil:"min=0s,max=720h" desc:"time after start during which listeners form the baseline"`
	// BaselinePorts are listening ports always in the baseline.
	BaselinePorts []int `json:"baseline_ports" vigil:"max=4096" desc:"listening ports always in the baseline"`
	// BaselineExes are executables always in the listener baseline.
	BaselineExes []string `json:"baseline_exes" vigil:"max=4096" desc:"executables always in the listener baseline"`
	// Blocklist holds networks (CIDR) an outbound connection must not reach.
	Blocklist []string `json:"blocklist" vigil:"max=65536" desc:"networks (CIDR) outbound connections must not reach"`
	// Shells are executable base names or command names treated as shells.
	Shells []string `json:"shells" vigil:"max=256" desc:"executable or command names treated as shells"`
	// MaxEventsPerSnapshot caps the telemetry events one snapshot emits;
	// the rest are counted in events_suppressed. Alerts are not capped here.
	MaxEventsPerSnapshot int `json:"max_events_per_snapshot" vigil:"min=1,max=1000000" desc:"most telemetry events one snapshot emits"`
	// ProcRoot is the procfs mount.
	ProcRoot string `json:"proc_root" vigil:"min=1,max=4096" desc:"procfs mount point"`
}

// Default configuration values.
const (
	DefaultInterval             = 5 * time.Second
	DefaultMaxInterval          = 5 * time.Minute
	DefaultCPUPercent           = 1.0
	DefaultSnapshotBudget       = 500 * time.Millisecond
	DefaultAttributionFDs       = 250000
	DefaultLearningPeriod       = 30 * time.Minute
	DefaultMaxEventsPerSnapshot = 1000
)

// DefaultShells are the shells netmon knows by default.
var DefaultShells = []string{"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "csh", "tcsh", "fish", "busybox"}

// DefaultConfig returns a new config filled with the defaults.
func DefaultConfig() *Config {
	return &Config{
		Interval:             sdk.Duration(DefaultInterval),
		MaxInterval:          sdk.Duration(DefaultMaxInterval),
		CPUPercent:           DefaultCPUPercent,
		SnapshotBudget:       sdk.Duration(DefaultSnapshotBudget),
		AttributionFDs:       DefaultAttributionFDs,
		UDP:                  true,
		AllNamespaces:        true,
		LearningPeriod:       sdk.Duration(DefaultLearningPeriod),
		BaselinePorts:        []int{},
		BaselineExes:         []string{},
		Blocklist:            []string{},
		Shells:               append([]string(nil), DefaultShells...),
		MaxEventsPerSnapshot: DefaultMaxEventsPerSnapshot,
		ProcRoot:             "/proc",
	}
}

// Validate checks what the struct tags cannot. It is pure.
func (c *Config) Validate() error {
	var errs []error
	if c.MaxInterval < c.Interval {
		errs = append(errs, fmt.Errorf("netmon.max_interval must be at least netmon.interval (%s) (got %s)", c.Interval.D(), c.MaxInterval.D()))
	}
	for i, s := range c.Blocklist {
		if _, err := netip.ParsePrefix(s); err != nil {
			errs = append(errs, fmt.Errorf("netmon.blocklist[%d] must be a CIDR such as 203.0.113.0/24 or 2001:db8::/32 (got %q)", i, s))
		}
	}
	for i, p := range c.BaselinePorts {
		if p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("netmon.baseline_ports[%d] must be between 1 and 65535 (got %d)", i, p))
		}
	}
	for i, s := range c.Shells {
		if s == "" || strings.ContainsRune(s, '/') {
			errs = append(errs, fmt.Errorf("netmon.shells[%d] must be a non-empty name without '/' (got %q)", i, s))
		}
	}
	for i, s := range c.BaselineExes {
		if !strings.HasPrefix(s, "/") {
			errs = append(errs, fmt.Errorf("netmon.baseline_exes[%d] must be an absolute path (got %q)", i, s))
		}
	}
	return errors.Join(errs...)
}

// blocklist parses the validated Blocklist.
func (c *Config) blocklist() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(c.Blocklist))
	for _, s := range c.Blocklist {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}
