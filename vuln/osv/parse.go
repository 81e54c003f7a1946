package osv

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vigil-hids/vigil/vuln/version"
)

// ErrInvalid is matched by the errors of advisories that are skipped.
var ErrInvalid = errors.New("osv: invalid advisory")

// ErrNotApplicable is matched by Parse's error for a well-formed
// advisory with no affected package of a supported ecosystem (it is
// counted as ignored, not as an error).
var ErrNotApplicable = errors.New("osv: no supported ecosystem")

// The OSV JSON schema, as far as it is read here.
type record struct {
	ID        string          `json:"id"`
	Modified  string          `json:"modified"`
	Withdrawn string          `json:"withdrawn"`
	Aliases   []string        `json:"aliases"`
	Upstream  []string        `json:"upstream"`
	Summary   string          `json:"summary"`
	Severity  []severity      `json:"severity"`
	Affected  []affected      `json:"affected"`
	DBSpec    json.RawMessage `json:"database_specific"`
}

type severity struct {
	Type  string `json:"type"`
	Score string `json:"score"`
}

type affected struct {
	Package struct {
		Ecosystem string `json:"ecosystem"`
		Name      string `json:"name"`
	} `json:"package"`
	Severity []severity      `json:"severity"`
	Ranges   []rangeRecord   `json:"ranges"`
	Versions []string        `json:"versions"`
	ESpec    json.RawMessage `json:"ecosystem_specific"`
	DBSpec   json.RawMessage `json:"database_specific"`
}

type rangeRecord struct {
	Type   string              `json:"type"`
	Events []map[string]string `json:"events"`
}

// Parse reads one OSV advisory. Errors name the field, as
// "affected[0].ranges[1].events[2]: ...", and match ErrInvalid, or
// ErrNotApplicable for an advisory of other ecosystems only. A withdrawn
// advisory is not applicable.
func Parse(b []byte) (*Advisory, error) {
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if r.ID == "" {
		return nil, fmt.Errorf("%w: id: missing", ErrInvalid)
	}
	if r.Withdrawn != "" {
		return nil, fmt.Errorf("%w: %s was withdrawn on %s", ErrNotApplicable, r.ID, r.Withdrawn)
	}
	a := &Advisory{ID: r.ID, Summary: r.Summary}
	if r.Modified != "" {
		t, err := time.Parse(time.RFC3339Nano, r.Modified)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: modified: %q is not an RFC 3339 time", ErrInvalid, r.ID, r.Modified)
		}
		a.Modified = t
	}
	for _, id := range slices.Concat([]string{r.ID}, r.Aliases, r.Upstream) {
		if strings.HasPrefix(id, "CVE-") && !slices.Contains(a.CVEs, id) {
			a.CVEs = append(a.CVEs, id)
		}
	}
	slices.Sort(a.CVEs)
	a.Severity = severityOf(r.Severity, r.DBSpec)

	unsupported := 0
	for i, ar := range r.Affected {
		eco, err := ParseEcosystem(ar.Package.Ecosystem)
		if errors.Is(err, ErrUnsupportedEcosystem) {
			unsupported++
			continue
		}
		if ar.Package.Name == "" {
			return nil, fmt.Errorf("%w: %s: affected[%d].package.name: missing", ErrInvalid, r.ID, i)
		}
		af := Affected{Ecosystem: eco, Package: ar.Package.Name}
		for j, rr := range ar.Ranges {
			if rr.Type != "ECOSYSTEM" {
				continue // SEMVER and GIT ranges are for upstream code, not distro packages
			}
			rs, err := parseRange(eco.Kind, rr.Events)
			if err != nil {
				return nil, fmt.Errorf("%w: %s: affected[%d].ranges[%d].%v", ErrInvalid, r.ID, i, j, err)
			}
			af.Ranges = append(af.Ranges, rs...)
		}
		for j, v := range ar.Versions {
			if err := version.Validate(eco.Kind, v); err != nil {
				return nil, fmt.Errorf("%w: %s: affected[%d].versions[%d]: %v", ErrInvalid, r.ID, i, j, err)
			}
			af.Versions = append(af.Versions, v)
		}
		if len(af.Ranges) == 0 && len(af.Versions) == 0 {
			return nil, fmt.Errorf("%w: %s: affected[%d]: no ECOSYSTEM range and no versions", ErrInvalid, r.ID, i)
		}
		if s := severityOf(ar.Severity, ar.DBSpec); s.Level > a.Severity.Level || s.Score > a.Severity.Score {
			a.Severity = s
		}
		a.Affected = append(a.Affected, af)
	}
	if len(a.Affected) == 0 {
		if unsupported > 0 || len(r.Affected) == 0 {
			return nil, fmt.Errorf("%w: %s", ErrNotApplicable, r.ID)
		}
	}
	return a, nil
}

// parseRange turns OSV range events into intervals. Events are read in
// order: an "introduced" opens an interval, a "fixed" or
// "last_affected" closes it.
func parseRange(k version.Kind, events []map[string]string) ([]Range, error) {
	if len(events) == 0 {
		return nil, errors.New("events: empty")
	}
	var (
		out  []Range
		cur  *Range
		open bool
	)
	for i, ev := range events {
		if len(ev) != 1 {
			return nil, fmt.Errorf("events[%d]: want exactly one of introduced, fixed, last_affected, limit (got %d keys)", i, len(ev))
		}
		for key, v := range ev {
			if v != "0" || key != "introduced" {
				if err := version.Validate(k, v); err != nil {
					return nil, fmt.Errorf("events[%d].%s: %v", i, key, err)
				}
			}
			switch key {
			case "introduced":
				if open {
					out = append(out, *cur) // an open interval, then another start: the first has no fix
				}
				cur, open = &Range{Introduced: v}, true
			case "fixed", "last_affected":
				if !open {
					cur = &Range{} // "fixed" without "introduced": from the first version
				}
				if key == "fixed" {
					cur.Fixed = v
				} else {
					cur.LastAffected = v
				}
				out = append(out, *cur)
				open = false
			case "limit":
			default:
				return nil, fmt.Errorf("events[%d]: unknown event %q (known: introduced, fixed, last_affected, limit)", i, key)
			}
		}
	}
	if open {
		out = append(out, *cur)
	}
	return out, nil
}

// severityOf reads a severity list and database_specific: a CVSS v3
// vector's base score if there is one, else a distribution's word
// ("Ubuntu" severity type, database_specific.severity or .urgency).
func severityOf(list []severity, dbspec json.RawMessage) Severity {
	var s Severity
	for _, sv := range list {
		switch sv.Type {
		case "CVSS_V3":
			if score, err := CVSS3BaseScore(sv.Score); err == nil && score > s.Score {
				s = Severity{Level: LevelOf(score), Score: score}
			}
		case "Ubuntu":
			if l := ParseLevel(sv.Score); s.Score == 0 && l > s.Level {
				s.Level = l
			}
		}
	}
	if s.Level == LevelUnknown && len(dbspec) > 0 {
		var d struct {
			Severity string `json:"severity"`
			Urgency  string `json:"urgency"`
		}
		if json.Unmarshal(dbspec, &d) == nil {
			s.Level = max(ParseLevel(d.Severity), ParseLevel(strings.TrimSuffix(d.Urgency, "*")))
		}
	}
	return s
}
