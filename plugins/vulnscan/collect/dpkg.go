package collect

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/vigil-hids/vigil/vuln/inventory"
	"github.com/vigil-hids/vigil/vuln/version"
)

// ParseDpkgStatus reads a dpkg status file (/var/lib/dpkg/status) and
// returns its installed packages ("Status: install ok installed"; packages
// that are only configured-off, half-installed or removed are left out).
// A stanza without Package or Version, or with a version dpkg would reject,
// is skipped, and why is returned in partial; err is set only when r
// cannot be read.
func ParseDpkgStatus(r io.Reader) (pkgs []inventory.Package, partial []string, err error) {
	var cur stanza
	skipped := skips{what: "dpkg status", unit: "stanza"}
	n, err := paragraphs(r, func(line int, b []byte) {
		if b[0] == ' ' || b[0] == '\t' { // continuation of a multi-line field
			return
		}
		k, v, ok := bytes.Cut(b, []byte{':'})
		if !ok {
			cur.bad = fmt.Sprintf("line %d is not a field: %q", line, clip(b))
			return
		}
		cur.set(string(k), strings.TrimSpace(string(v)))
	}, func(line int) {
		defer func() { cur = stanza{} }()
		if cur.empty() {
			return
		}
		p, why := cur.dpkgPackage()
		switch {
		case why != "":
			skipped.add(line, why)
		case p != nil:
			pkgs = append(pkgs, *p)
		}
	})
	if err != nil {
		return pkgs, skipped.reasons(), fmt.Errorf("reading dpkg status at line %d: %w", n+1, err)
	}
	return pkgs, skipped.reasons(), nil
}

// stanza holds the fields of one package paragraph that matter here.
type stanza struct {
	pkg, ver, arch, source, status, bad string
	any                                 bool
}

func (s *stanza) empty() bool { return !s.any && s.bad == "" }

func (s *stanza) set(k, v string) {
	s.any = true
	switch k {
	case "Package":
		s.pkg = v
	case "Version":
		s.ver = v
	case "Architecture":
		s.arch = v
	case "Source":
		s.source = v
	case "Status":
		s.status = v
	}
}

// dpkgPackage returns the package, nil for one that is not installed, or
// why the stanza is unusable.
func (s *stanza) dpkgPackage() (*inventory.Package, string) {
	if s.bad != "" {
		return nil, s.bad
	}
	if s.pkg == "" {
		return nil, "no Package field"
	}
	// Status is "want flag state"; only the state says what is on disk.
	if f := strings.Fields(s.status); len(f) != 3 || f[2] != "installed" {
		return nil, ""
	}
	if s.ver == "" {
		return nil, fmt.Sprintf("package %q has no Version field", s.pkg)
	}
	if err := version.Validate(version.Dpkg, s.ver); err != nil {
		return nil, fmt.Sprintf("package %q: %v", s.pkg, err)
	}
	p := &inventory.Package{Name: s.pkg, Version: s.ver, Arch: s.arch}
	if s.source != "" {
		// "Source: name" or "Source: name (version)" when the source
		// version differs (binNMU, or a version bumped in the binary).
		name, rest, _ := strings.Cut(s.source, " ")
		if name != s.pkg {
			p.Source = name
		}
		if rest = strings.TrimSpace(rest); strings.HasPrefix(rest, "(") && strings.HasSuffix(rest, ")") {
			if sv := strings.TrimSpace(rest[1 : len(rest)-1]); sv != s.ver {
				p.SourceVersion = sv
			}
		}
	}
	return p, ""
}

func clip(b []byte) string {
	if len(b) > 60 {
		return string(b[:60]) + "..."
	}
	return string(b)
}
