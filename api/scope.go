package api

import (
	"fmt"
	"regexp"
	"strings"
)

// ScopeKind is the kind of a desired-state scope.
type ScopeKind string

// Scope kinds, from the widest to the narrowest. The effective state of a
// host is fleet ⊕ groups (sorted by label, then value) ⊕ host.
const (
	ScopeFleet ScopeKind = "fleet"
	ScopeGroup ScopeKind = "group"
	ScopeHost  ScopeKind = "host"
)

// Scope names where a desired-state document applies.
type Scope struct {
	Kind  ScopeKind
	Label string // group scopes
	Value string // group scopes
	Host  string // host scopes
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

// ValidName reports whether s may be a host name, label or label value:
// letters, digits, dot, dash and underscore, 1 to 253 characters, not
// starting with a punctuation mark, so it can never form a key of another
// scope.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// ParseScope parses "fleet", "group:k=v" or "host:NAME".
func ParseScope(s string) (Scope, error) {
	kind, rest, _ := strings.Cut(s, ":")
	switch ScopeKind(kind) {
	case ScopeFleet:
		if rest != "" {
			return Scope{}, fmt.Errorf("scope %q: fleet takes no argument", s)
		}
		return Scope{Kind: ScopeFleet}, nil
	case ScopeGroup:
		label, value, ok := strings.Cut(rest, "=")
		if !ok || !ValidName(label) || !ValidName(value) {
			return Scope{}, fmt.Errorf("scope %q: want group:LABEL=VALUE with letters, digits, '.', '-', '_'", s)
		}
		return Scope{Kind: ScopeGroup, Label: label, Value: value}, nil
	case ScopeHost:
		if !ValidName(rest) {
			return Scope{}, fmt.Errorf("scope %q: want host:NAME with letters, digits, '.', '-', '_'", s)
		}
		return Scope{Kind: ScopeHost, Host: rest}, nil
	}
	return Scope{}, fmt.Errorf("scope %q: want fleet, group:LABEL=VALUE or host:NAME", s)
}

// String returns the scope as ParseScope reads it.
func (s Scope) String() string {
	switch s.Kind {
	case ScopeFleet:
		return "fleet"
	case ScopeGroup:
		return "group:" + s.Label + "=" + s.Value
	default:
		return "host:" + s.Host
	}
}
