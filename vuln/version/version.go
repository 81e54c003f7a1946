// Package version compares package versions by the rules of each Linux
// packaging ecosystem: dpkg (epoch:upstream-revision, "~" sorting before
// everything), rpm EVR (rpmvercmp, with "~" and "^") and apk.
//
// It wraps the well-kept github.com/knqyf263/go-{deb,rpm,apk}-version
// libraries behind one Comparator, and adds the rules they leave to the
// caller: a version that does not parse never panics and never silently
// compares as equal; it is reported by Parse and ordered by Compare after
// every valid version, so matching can say the result is partial.
package version

import (
	"errors"
	"fmt"
	"strings"

	apk "github.com/knqyf263/go-apk-version"
	deb "github.com/knqyf263/go-deb-version"
	rpm "github.com/knqyf263/go-rpm-version"
)

// Kind names a version scheme.
type Kind uint8

// Version schemes. Unknown is the zero value and compares nothing.
const (
	Unknown Kind = iota
	Dpkg
	RPM
	APK
)

var kindNames = [...]string{"unknown", "dpkg", "rpm", "apk"}

// String returns the scheme's lower-case name.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// ParseKind returns the scheme named s ("dpkg", "deb", "rpm", "apk").
func ParseKind(s string) (Kind, error) {
	switch strings.ToLower(s) {
	case "dpkg", "deb", "debian":
		return Dpkg, nil
	case "rpm":
		return RPM, nil
	case "apk", "alpine":
		return APK, nil
	}
	return Unknown, fmt.Errorf("%w %q (known: dpkg, rpm, apk)", ErrUnknownKind, s)
}

// ErrUnknownKind is returned for a scheme this package does not know.
var ErrUnknownKind = errors.New("version: unknown version scheme")

// ErrInvalid is matched by Validate's error for a version the scheme
// rejects.
var ErrInvalid = errors.New("version: invalid version")

// Validate reports whether v is a well-formed version of scheme k.
// rpm accepts any string (rpmvercmp is total), so only the empty string
// is rejected there.
func Validate(k Kind, v string) error {
	if v == "" {
		return fmt.Errorf("%w: empty %s version", ErrInvalid, k)
	}
	switch k {
	case Dpkg:
		if _, err := deb.NewVersion(v); err != nil {
			return fmt.Errorf("%w: dpkg version %q: %v", ErrInvalid, v, err)
		}
	case RPM:
		return nil
	case APK:
		if !apk.Valid(v) {
			return fmt.Errorf("%w: apk version %q", ErrInvalid, v)
		}
	default:
		return fmt.Errorf("%w %q", ErrUnknownKind, k)
	}
	return nil
}

// Compare returns -1, 0 or +1 as a is older than, the same as, or newer
// than b under scheme k. It never panics. A version that does not parse
// sorts after every valid one and invalid versions compare by their bytes,
// so Compare is a total order and antisymmetric on any input; callers that
// must not trust such a result call Validate first.
func Compare(k Kind, a, b string) int {
	if a == b {
		return 0
	}
	switch k {
	case Dpkg:
		va, ea := deb.NewVersion(a)
		vb, eb := deb.NewVersion(b)
		if c, done := invalidOrder(ea == nil, eb == nil, a, b); done {
			return c
		}
		return sign(va.Compare(vb))
	case RPM:
		return sign(rpm.NewVersion(a).Compare(rpm.NewVersion(b)))
	case APK:
		va, ea := apk.NewVersion(a)
		vb, eb := apk.NewVersion(b)
		if c, done := invalidOrder(ea == nil && apk.Valid(a), eb == nil && apk.Valid(b), a, b); done {
			return c
		}
		return sign(va.Compare(vb))
	}
	return strings.Compare(a, b)
}

// invalidOrder orders a pair where either side is invalid: invalid after
// valid, two invalid ones by their bytes. done is false when both are valid.
func invalidOrder(okA, okB bool, a, b string) (c int, done bool) {
	switch {
	case okA && okB:
		return 0, false
	case okA:
		return -1, true
	case okB:
		return 1, true
	}
	return strings.Compare(a, b), true
}

func sign(c int) int {
	switch {
	case c < 0:
		return -1
	case c > 0:
		return 1
	}
	return 0
}
