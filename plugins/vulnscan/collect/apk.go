package collect

import (
	"bufio"
	"bytes"
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
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	var (
		p          inventory.Package
		any        bool
		line, skip int
		bad        string
	)
	flush := func() {
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
			skip++
			if skip <= maxReasons {
				partial = append(partial, fmt.Sprintf("apk installed: paragraph ending at line %d skipped: %s", line, why))
			}
			return
		}
		if p.Source == p.Name {
			p.Source = ""
		}
		pkgs = append(pkgs, p)
	}
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(bytes.TrimSpace(b)) == 0 {
			flush()
			continue
		}
		if len(b) < 2 || b[1] != ':' {
			bad = fmt.Sprintf("line %d is not a field: %q", line, clip(b))
			continue
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
	}
	flush()
	if skip > maxReasons {
		partial = append(partial, fmt.Sprintf("apk installed: %d more paragraphs skipped", skip-maxReasons))
	}
	if err := sc.Err(); err != nil {
		return pkgs, partial, fmt.Errorf("reading apk installed at line %d: %w", line+1, err)
	}
	return pkgs, partial, nil
}
