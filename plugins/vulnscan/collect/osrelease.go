package collect

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vigil-hids/vigil/vuln/inventory"
)

// ParseOSRelease reads os-release(5): KEY=value lines, values optionally
// quoted in shell style. Unknown keys and malformed lines are ignored, as
// systemd does.
func ParseOSRelease(r io.Reader) (inventory.OS, error) {
	var o inventory.OS
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			if u, err := strconv.Unquote(`"` + v[1:len(v)-1] + `"`); err == nil && v[0] == '"' {
				v = u
			} else {
				v = v[1 : len(v)-1]
			}
		}
		switch k {
		case "ID":
			o.ID = strings.ToLower(v)
		case "ID_LIKE":
			o.IDLike = strings.Fields(strings.ToLower(v))
		case "VERSION_ID":
			o.VersionID = v
		case "VERSION_CODENAME":
			o.Codename = v
		case "PRETTY_NAME":
			o.PrettyName = v
		}
	}
	if err := sc.Err(); err != nil {
		return o, fmt.Errorf("reading os-release: %w", err)
	}
	return o, nil
}

// ReadOSRelease reads root/etc/os-release, or root/usr/lib/os-release when
// the first does not exist, as os-release(5) says.
func ReadOSRelease(root string) (inventory.OS, error) {
	var firstErr error
	for _, p := range []string{"etc/os-release", "usr/lib/os-release"} {
		f, err := os.Open(filepath.Join(root, p))
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		defer f.Close()
		o, err := ParseOSRelease(f)
		if err != nil {
			return o, fmt.Errorf("%s: %w", f.Name(), err)
		}
		return o, nil
	}
	return inventory.OS{}, fmt.Errorf("reading os-release: %w", firstErr)
}

// Kernel returns the running kernel's release from
// root/proc/sys/kernel/osrelease, e.g. "6.1.0-18-amd64".
func Kernel(root string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, "proc/sys/kernel/osrelease"))
	if err != nil {
		return "", fmt.Errorf("reading kernel release: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
