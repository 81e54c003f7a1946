package breaker

import "github.com/vigil-hids/vigil/internal/limits"

// The limits table lives in internal/limits, shared with the server, which
// checks overrides before it writes them; these names keep the breaker's
// API in one place for its callers.
type (
	Limits    = limits.Limits
	Overrides = limits.Overrides
)

// Profile names.
const (
	ProfileNormal  = limits.ProfileNormal
	ProfileStrict  = limits.ProfileStrict
	DefaultProfile = limits.DefaultProfile
)

// ErrUnknownProfile is returned for a profile name not in the table.
var ErrUnknownProfile = limits.ErrUnknownProfile

// Profile returns the limits of a named profile ("" means DefaultProfile).
func Profile(name string) (Limits, error) { return limits.Profile(name) }

// Profiles returns the names of the profiles in the table.
func Profiles() []string { return limits.Profiles() }
