package collect

import (
	"fmt"
	"io"

	"github.com/vigil-hids/vigil/vuln/inventory"
	"github.com/vigil-hids/vigil/vuln/version"
)

// ParseAPKInstalled reads Alpine's installed database
// (/lib/apk/db/installed): paragraphs of one-letter fields, P: name,
// V: version, A: arch, o: origin (the source package). A paragraph without
// a name or with a version apk would reject is skipped, and why is
// returned in partial; err is set only when r cannot be read.
func ParseAPKInstalled(r io.Reader) (pkgs []inventory.Package, partial []string, err error) {
	var (
		p   inventory.Package
		any bool
		bad string
	)
	skipped := skips{what: "apk installed", unit: "paragraph"}
	n, err := paragraphs(r, func(line int, b []byte) {
		if len(b) < 2 || b[1] != ':' {
			bad = fmt.Sprintf("line %d is not a field: %q", line, clip(b))
			return
		}
		any = true
		v := string(b[2:])
		switch b[0] {
		case 'P':
			p.Name = v
		case 'V':
			p.Version = v
		case 'A':
			p.Arch = v
		case 'o':
			p.Source = v
		}
	}, func(line int) {
		defer func() { p, any, bad = inventory.Package{}, false, "" }()
		if !any && bad == "" {
			return
		}
		why := bad
		switch {
		case why != "":
		case p.Name == "":
			why = "no P: (name) field"
		case version.Validate(version.APK, p.Version) != nil:
			why = fmt.Sprintf("package %q: %v", p.Name, version.Validate(version.APK, p.Version))
		}
		if why != "" {
			skipped.add(line, why)
			return
		}
		if p.Source == p.Name {
			p.Source = ""
		}
		pkgs = append(pkgs, p)
	})
	if err != nil {
		return pkgs, skipped.reasons(), fmt.Errorf("reading apk installed at line %d: %w", n+1, err)
	}
	return pkgs, skipped.reasons(), nil
}
