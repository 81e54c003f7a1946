package config

import (
	"fmt"
	"path/filepath"
	"time"
)

// Update lets the fleet install signed plugin releases on this host (the
// desired state's plugin version). Absent, the host runs the binaries its
// config file names and refuses desired versions. The manifests come from
// etcd (the control section) and the binaries from the server section's
// artifact store; both are untrusted mirrors checked against these keys.
type Update struct {
	// TrustFile pins release keys and their threshold (vigil-sign trust).
	// Or: RootsFile pins root keys, and KeyringFile is the root-signed
	// keyring that lists the release keys (vigil-sign keyring).
	TrustFile   string `yaml:"trust_file"`
	RootsFile   string `yaml:"roots_file"`
	KeyringFile string `yaml:"keyring_file"`
	// Dir receives installed releases as {dir}/{plugin}/{version}/;
	// default {state_dir}/plugins.
	Dir string `yaml:"dir"`
	// SpreadWindow: each host starts a download at its own moment of this
	// window (a hash of host name and release), so a rollout does not
	// flood the server; 0 starts at once.
	SpreadWindow time.Duration `yaml:"spread_window"`
	// HealthWindow: a new version must pass the handshake and then run
	// this long without crashing, or the previous one comes back.
	HealthWindow time.Duration `yaml:"health_window"`
	// StartTimeout bounds the wait for the new version's first successful
	// start (handshake, Info, Configure).
	StartTimeout time.Duration `yaml:"start_timeout"`
	// RequestTimeout bounds each download request; StallTimeout cuts one
	// that receives nothing for that long; Attempts counts the requests a
	// download may take (resumed with a Range after a cut).
	RequestTimeout time.Duration `yaml:"request_timeout"`
	StallTimeout   time.Duration `yaml:"stall_timeout"`
	Attempts       int           `yaml:"attempts"`
	// Keep is how many previous versions stay on disk per plugin besides
	// the running one (an instant rollback needs one).
	Keep int `yaml:"keep"`
	// KeyringRefresh: with roots_file and keyring_file, the host reads the
	// keyring published for the fleet before every install and also this
	// often (each host at its own moment), so a rotated or revoked release
	// key reaches hosts that install nothing meanwhile.
	KeyringRefresh time.Duration `yaml:"keyring_refresh"`
}

// Update defaults.
const (
	DefaultUpdateHealthWindow   = 30 * time.Second
	DefaultUpdateStartTimeout   = time.Minute
	DefaultUpdateRequestTimeout = 5 * time.Minute
	DefaultUpdateStallTimeout   = 30 * time.Second
	DefaultUpdateAttempts       = 5
	DefaultUpdateKeep           = 1
	DefaultKeyringRefresh       = 10 * time.Minute
)

// UpdateSettings returns the update section with its defaults filled in;
// nil when there is none.
func (c Config) UpdateSettings() *Update {
	if c.Update == nil {
		return nil
	}
	u := *c.Update
	if u.Dir == "" {
		u.Dir = filepath.Join(c.StateDir, "plugins")
	}
	if u.HealthWindow == 0 {
		u.HealthWindow = DefaultUpdateHealthWindow
	}
	if u.StartTimeout == 0 {
		u.StartTimeout = DefaultUpdateStartTimeout
	}
	if u.RequestTimeout == 0 {
		u.RequestTimeout = DefaultUpdateRequestTimeout
	}
	if u.StallTimeout == 0 {
		u.StallTimeout = DefaultUpdateStallTimeout
	}
	if u.Attempts == 0 {
		u.Attempts = DefaultUpdateAttempts
	}
	if u.Keep == 0 {
		u.Keep = DefaultUpdateKeep
	}
	if u.KeyringRefresh == 0 {
		u.KeyringRefresh = DefaultKeyringRefresh
	}
	return &u
}

func (c Config) validateUpdate() []error {
	if c.Update == nil {
		return nil
	}
	u := *c.UpdateSettings()
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	switch {
	case u.TrustFile != "" && (u.RootsFile != "" || u.KeyringFile != ""):
		bad("update: set either update.trust_file or update.roots_file with update.keyring_file, not both")
	case u.TrustFile == "" && (u.RootsFile == "" || u.KeyringFile == ""):
		bad("update: set update.trust_file, or update.roots_file and update.keyring_file (got roots_file %q, keyring_file %q)", u.RootsFile, u.KeyringFile)
	}
	if c.Control == nil {
		bad("update needs the control section (release manifests are read from etcd)")
	}
	if c.Server == nil {
		bad("update needs the server section (release binaries are downloaded from it)")
	}
	if !filepath.IsAbs(u.Dir) {
		bad("update.dir must be an absolute path (got %q)", u.Dir)
	}
	if u.SpreadWindow < 0 || u.SpreadWindow > 24*time.Hour {
		bad("update.spread_window must be between 0s and 24h (got %s)", u.SpreadWindow)
	}
	if u.HealthWindow < 100*time.Millisecond || u.HealthWindow > time.Hour {
		bad("update.health_window must be between 100ms and 1h (got %s)", u.HealthWindow)
	}
	if u.StartTimeout < time.Second || u.StartTimeout > time.Hour {
		bad("update.start_timeout must be between 1s and 1h (got %s)", u.StartTimeout)
	}
	if u.RequestTimeout < time.Second || u.RequestTimeout > 24*time.Hour {
		bad("update.request_timeout must be between 1s and 24h (got %s)", u.RequestTimeout)
	}
	if u.StallTimeout < 100*time.Millisecond || u.StallTimeout > time.Hour {
		bad("update.stall_timeout must be between 100ms and 1h (got %s)", u.StallTimeout)
	}
	if u.Attempts < 1 || u.Attempts > 100 {
		bad("update.attempts must be between 1 and 100 (got %d)", u.Attempts)
	}
	if u.Keep < 1 || u.Keep > 20 {
		bad("update.keep must be between 1 and 20 (got %d)", u.Keep)
	}
	if u.KeyringRefresh < time.Second || u.KeyringRefresh > 24*time.Hour {
		bad("update.keyring_refresh must be between 1s and 24h (got %s)", u.KeyringRefresh)
	}
	return errs
}
