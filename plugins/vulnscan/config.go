package vulnscan

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/vigil-hids/vigil/sdk"
)

// Config is vulnscan's configuration. Every key is optional.
type Config struct {
	RescanInterval sdk.Duration `json:"rescan_interval" vigil:"min=1m,max=168h" desc:"how often the inventory is collected even without a change; the first rescan is spread over this interval by a hash of the host name"`
	Settle         sdk.Duration `json:"settle" vigil:"min=100ms,max=10m" desc:"how long the package databases must be quiet after a change before the inventory is collected"`
	Watch          bool         `json:"watch" desc:"watch the package databases with inotify and collect on change"`
	Root           string       `json:"root" desc:"the root the package databases, os-release and proc are read under; tests point it at testdata"`
	CollectTimeout sdk.Duration `json:"collect_timeout" vigil:"min=1s,max=1h" desc:"how long one collection may take before it is reported as stuck (a corrupt rpm database can hang the reader)"`
}

// DefaultConfig returns the defaults. The server validates configs against
// it (plugins/catalog) before writing them.
func DefaultConfig() *Config {
	return &Config{
		RescanInterval: sdk.Duration(12 * time.Hour),
		Settle:         sdk.Duration(5 * time.Second),
		Watch:          true,
		Root:           "/",
		CollectTimeout: sdk.Duration(2 * time.Minute),
	}
}

// Validate checks what the tags cannot. It is pure: it looks only at c.
func (c *Config) Validate() error {
	var errs []error
	if !filepath.IsAbs(c.Root) {
		errs = append(errs, fmt.Errorf("%s.root must be an absolute path (got %q)", Name, c.Root))
	}
	return errors.Join(errs...)
}
