// Package collect reads a host's package inventory under a root path: the
// dpkg, apk or rpm database (all three rpm formats), /etc/os-release and
// the running kernel. Tests point the root at fixtures under testdata, the
// plugin at "/".
package collect

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/vigil-hids/vigil/vuln/inventory"
)

// Database paths under the root, by ecosystem, in the order they are
// tried. rpm has moved its database over the years: /var/lib/rpm
// (Packages or rpmdb.sqlite) and /usr/lib/sysimage/rpm (RHEL 9+, SUSE 15+;
// Packages.db or rpmdb.sqlite).
const (
	DpkgStatus   = "var/lib/dpkg/status"
	APKInstalled = "lib/apk/db/installed"
)

// RPMDatabases returns the rpm database paths under the root, in the
// order they are tried.
func RPMDatabases() []string {
	return []string{
		"usr/lib/sysimage/rpm/rpmdb.sqlite",
		"usr/lib/sysimage/rpm/Packages.db",
		"var/lib/rpm/rpmdb.sqlite",
		"var/lib/rpm/Packages.db",
		"var/lib/rpm/Packages",
	}
}

// ErrNoDatabase is returned when no known package database is under the
// root.
var ErrNoDatabase = errors.New("collect: no dpkg, apk or rpm package database found")

// Snapshot is what one collection found.
type Snapshot struct {
	Inventory inventory.Inventory
	// Kernel is the running kernel's release; it is per boot, not part of
	// the inventory digest.
	Kernel string
	// Database is the path of the package database that was read.
	Database string
}

// Databases returns the package database paths under root that exist,
// with their ecosystem, in the order Collect prefers them.
func Databases(root string) (paths, ecosystems []string) {
	add := func(p, eco string) {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			paths = append(paths, filepath.Join(root, p))
			ecosystems = append(ecosystems, eco)
		}
	}
	add(DpkgStatus, "dpkg")
	add(APKInstalled, "apk")
	for _, p := range RPMDatabases() {
		add(p, "rpm")
	}
	return paths, ecosystems
}

// native returns the ecosystem the distribution itself uses, "" when
// os-release does not say.
func native(o inventory.OS) string {
	for _, id := range append([]string{o.ID}, o.IDLike...) {
		switch id {
		case "debian", "ubuntu":
			return "dpkg"
		case "alpine":
			return "apk"
		case "rhel", "fedora", "centos", "rocky", "almalinux", "ol", "amzn", "suse", "sles", "opensuse", "mariner", "azurelinux":
			return "rpm"
		}
	}
	return ""
}

// Collect reads the inventory under root. It picks the distribution's own
// package database (rpm installed on Debian, say, is not the system's
// inventory), or the first one found when os-release names no known
// family. Problems that leave the inventory incomplete (no os-release,
// skipped stanzas) are listed in Inventory.Partial; an error is returned
// only when no inventory could be read at all. rpm databases are read in
// this process with ReadRPM.
func Collect(root string) (*Snapshot, error) { return CollectWith(root, ReadRPM) }

// CollectWith is Collect with the rpm database reader given: the plugin
// passes one that reads the database in a child process.
func CollectWith(root string, readRPM func(path string) ([]inventory.Package, error)) (*Snapshot, error) {
	s := &Snapshot{}
	inv := &s.Inventory
	o, err := ReadOSRelease(root)
	if err != nil {
		inv.Partial = append(inv.Partial, err.Error())
	}
	inv.OS = o
	if k, err := Kernel(root); err == nil {
		s.Kernel = k
	}

	paths, ecos := Databases(root)
	if len(paths) == 0 {
		return nil, fmt.Errorf("%w under %s", ErrNoDatabase, root)
	}
	i := 0
	if n := native(o); n != "" {
		if j := slices.Index(ecos, n); j >= 0 {
			i = j
		}
	}
	s.Database, inv.Ecosystem = paths[i], ecos[i]

	var partial []string
	switch inv.Ecosystem {
	case "dpkg", "apk":
		f, err := os.Open(s.Database)
		if err != nil {
			return nil, fmt.Errorf("opening %s database: %w", inv.Ecosystem, err)
		}
		defer f.Close()
		if inv.Ecosystem == "dpkg" {
			inv.Packages, partial, err = ParseDpkgStatus(f)
		} else {
			inv.Packages, partial, err = ParseAPKInstalled(f)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Database, err)
		}
	case "rpm":
		inv.Packages, err = readRPM(s.Database)
		if err != nil {
			return nil, err
		}
	}
	inv.Partial = append(inv.Partial, partial...)
	if len(inv.Packages) == 0 {
		return nil, fmt.Errorf("%w: %s lists no installed package", fs.ErrNotExist, s.Database)
	}
	inv.Canonicalize()
	return s, nil
}
