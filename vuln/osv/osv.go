// Package osv reads vulnerability advisories in the OSV schema
// (https://ossf.github.io/osv-schema/) for the Linux distributions Vigil
// matches: Debian, Ubuntu, Alpine and the Red Hat family (Red Hat, Rocky
// Linux, AlmaLinux). It keeps what matching needs: the CVEs, the severity,
// and for each affected package its distribution release and ECOSYSTEM
// ranges. Advisories are read from JSON files, directories of them or zip
// archives (the form osv.dev publishes); a bad advisory is skipped and
// counted with an error naming its file and field, and never aborts an
// import.
package osv

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vigil-hids/vigil/vuln/version"
)

// ErrUnsupportedEcosystem is matched by ParseEcosystem's error for an
// ecosystem this package does not match (PyPI, npm, ...).
var ErrUnsupportedEcosystem = errors.New("osv: unsupported ecosystem")

// Ecosystem is a distribution release advisories are written for.
type Ecosystem struct {
	// Distro is "debian", "ubuntu", "alpine", "redhat", "rocky" or
	// "almalinux": the os-release ID a host must have.
	Distro string
	// Release is the release the advisory is for, as os-release's
	// VERSION_ID starts: "12", "22.04", "3.19", "9". Empty means every
	// release of the distribution.
	Release string
	// Kind is the distribution's version scheme.
	Kind version.Kind
}

// String writes the ecosystem as "distro:release".
func (e Ecosystem) String() string {
	if e.Release == "" {
		return e.Distro
	}
	return e.Distro + ":" + e.Release
}

// ParseEcosystem reads an OSV ecosystem string: "Debian:12",
// "Ubuntu:22.04:LTS", "Ubuntu:Pro:18.04:LTS", "Alpine:v3.19", "Red Hat",
// "Red Hat:enterprise_linux:9::appstream", "Rocky Linux:9",
// "AlmaLinux:8".
func ParseEcosystem(s string) (Ecosystem, error) {
	name, rest, _ := strings.Cut(s, ":")
	var e Ecosystem
	switch name {
	case "Debian":
		e = Ecosystem{Distro: "debian", Kind: version.Dpkg}
	case "Ubuntu":
		e = Ecosystem{Distro: "ubuntu", Kind: version.Dpkg}
	case "Alpine":
		e = Ecosystem{Distro: "alpine", Kind: version.APK}
	case "Red Hat":
		e = Ecosystem{Distro: "redhat", Kind: version.RPM}
	case "Rocky Linux":
		e = Ecosystem{Distro: "rocky", Kind: version.RPM}
	case "AlmaLinux":
		e = Ecosystem{Distro: "almalinux", Kind: version.RPM}
	default:
		return Ecosystem{}, fmt.Errorf("%w %q", ErrUnsupportedEcosystem, s)
	}
	// The release is the first part that starts with a digit, after an
	// optional "v" (Alpine): "Pro", "LTS", "enterprise_linux" and
	// repository names are not releases.
	for _, part := range strings.Split(rest, ":") {
		part = strings.TrimPrefix(part, "v")
		if part != "" && part[0] >= '0' && part[0] <= '9' {
			e.Release = part
			break
		}
	}
	return e, nil
}

// Matches says whether a host whose os-release has this ID and
// VERSION_ID is covered: the same distribution (rebuilds such as Rocky
// Linux have their own advisories), and the same release, by the
// release's leading components: "12" covers "12", and "9" covers "9.3";
// "3.19" covers "3.19.1" but not "3.1".
func (e Ecosystem) Matches(id, versionID string) bool {
	if e.OSID() != id {
		return false
	}
	if e.Release == "" {
		return true
	}
	return versionID == e.Release || strings.HasPrefix(versionID, e.Release+".")
}

// OSID returns the os-release ID of the distribution.
func (e Ecosystem) OSID() string {
	if e.Distro == "redhat" {
		return "rhel"
	}
	return e.Distro
}

// Severity levels, ordered.
type Level uint8

// Severity levels.
const (
	LevelUnknown Level = iota
	LevelLow
	LevelMedium
	LevelHigh
	LevelCritical
)

var levelNames = [...]string{"unknown", "low", "medium", "high", "critical"}

// String returns the level's lower-case name.
func (l Level) String() string {
	if int(l) < len(levelNames) {
		return levelNames[l]
	}
	return "unknown"
}

// ParseLevel reads a distribution's severity word: "low", "medium",
// "moderate", "high", "important", "critical", "negligible",
// "unimportant". Anything else is LevelUnknown.
func ParseLevel(s string) Level {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "negligible", "unimportant", "low":
		return LevelLow
	case "medium", "moderate":
		return LevelMedium
	case "high", "important":
		return LevelHigh
	case "critical":
		return LevelCritical
	}
	return LevelUnknown
}

// LevelOf returns the CVSS v3 qualitative rating of a base score.
func LevelOf(score float64) Level {
	switch {
	case score >= 9:
		return LevelCritical
	case score >= 7:
		return LevelHigh
	case score >= 4:
		return LevelMedium
	case score > 0:
		return LevelLow
	}
	return LevelUnknown
}

// Severity is an advisory's severity: the CVSS v3 base score when the
// advisory has a vector, and a level (from the score, or the
// distribution's own word when there is no vector).
type Severity struct {
	Level Level   `json:"level"`
	Score float64 `json:"score,omitempty"`
}

// Range is one interval of affected versions: from Introduced (empty or
// "0": from the first version) up to Fixed (excluded) or up to and
// including LastAffected; neither means no fix yet.
type Range struct {
	Introduced   string `json:"introduced,omitempty"`
	Fixed        string `json:"fixed,omitempty"`
	LastAffected string `json:"last_affected,omitempty"`
}

// Affected is one package of one distribution release an advisory names.
type Affected struct {
	Ecosystem Ecosystem `json:"ecosystem"`
	// Package is the name the distribution's advisories use: the source
	// package for Debian and Ubuntu, the origin for Alpine, the binary
	// rpm name for the Red Hat family.
	Package string `json:"package"`
	// Ranges are the affected intervals.
	Ranges []Range `json:"ranges,omitempty"`
	// Versions are affected versions listed one by one.
	Versions []string `json:"versions,omitempty"`
}

// Affects says whether version v of the package is affected, and if so
// the version that fixes it ("" when there is none yet).
func (a *Affected) Affects(v string) (affected bool, fixed string) {
	k := a.Ecosystem.Kind
	for _, r := range a.Ranges {
		if r.Introduced != "" && r.Introduced != "0" && version.Compare(k, v, r.Introduced) < 0 {
			continue
		}
		switch {
		case r.Fixed != "":
			if version.Compare(k, v, r.Fixed) < 0 {
				return true, r.Fixed
			}
		case r.LastAffected != "":
			if version.Compare(k, v, r.LastAffected) <= 0 {
				return true, ""
			}
		default:
			return true, ""
		}
	}
	for _, av := range a.Versions {
		if version.Compare(k, v, av) == 0 {
			return true, ""
		}
	}
	return false, ""
}

// Advisory is one OSV record, reduced to what matching needs.
type Advisory struct {
	ID string `json:"id"`
	// CVEs are the CVE IDs of the advisory: its ID when it is one, and
	// its aliases and upstream IDs that are. An advisory without any is
	// known by ID alone.
	CVEs     []string   `json:"cves,omitempty"`
	Summary  string     `json:"summary,omitempty"`
	Severity Severity   `json:"severity"`
	Modified time.Time  `json:"modified"`
	Affected []Affected `json:"affected"`
}

// Keys returns the IDs a user may search the advisory by: its CVEs, or
// its own ID when it has none.
func (a *Advisory) Keys() []string {
	if len(a.CVEs) > 0 {
		return a.CVEs
	}
	return []string{a.ID}
}
