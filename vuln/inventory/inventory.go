// Package inventory is the package list of one host as vulnscan collects
// it and the server indexes it: the ecosystem (dpkg, rpm or apk), the OS
// release, and every installed package with its source package. Hosts
// built from one image have the same inventory, so it is identified by a
// digest over its canonical form, and the server stores each inventory
// once per digest.
package inventory

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/vigil-hids/vigil/vuln/version"
)

// FormatVersion is the version of the canonical form the digest is taken
// over. It changes whenever a field is added, so old and new digests never
// collide.
const FormatVersion = 1

// Package is one installed package.
type Package struct {
	// Name is the binary package name, e.g. "libssl3" or "openssl-libs".
	Name string `json:"name"`
	// Version is the full version as the ecosystem writes it: dpkg
	// "1:2.3-4", rpm "1:3.0.7-24.el9" (the epoch only when set), apk
	// "3.1.4-r5".
	Version string `json:"version"`
	// Arch is the architecture, e.g. "amd64", "x86_64" or "noarch".
	Arch string `json:"arch,omitempty"`
	// Source is the source package the binary was built from (dpkg
	// Source, rpm SOURCERPM's name, apk origin); empty when the same as
	// Name.
	Source string `json:"source,omitempty"`
	// SourceVersion is the source package's version when it differs from
	// Version (dpkg "Source: name (version)", e.g. binNMUs).
	SourceVersion string `json:"source_version,omitempty"`
}

// SourceName returns the source package's name, Name when there is none.
func (p Package) SourceName() string {
	if p.Source != "" {
		return p.Source
	}
	return p.Name
}

// SourceVer returns the source package's version, Version when there is
// none.
func (p Package) SourceVer() string {
	if p.SourceVersion != "" {
		return p.SourceVersion
	}
	return p.Version
}

// OS is what /etc/os-release says.
type OS struct {
	// ID is the distribution, e.g. "debian", "ubuntu", "rhel", "alpine".
	ID string `json:"id"`
	// IDLike lists the distributions this one derives from.
	IDLike []string `json:"id_like,omitempty"`
	// VersionID is the release, e.g. "12", "22.04", "9.3", "3.19.1".
	VersionID string `json:"version_id,omitempty"`
	// Codename is VERSION_CODENAME, e.g. "bookworm".
	Codename string `json:"codename,omitempty"`
	// PrettyName is for people; it is not part of the digest.
	PrettyName string `json:"pretty_name,omitempty"`
}

// Inventory is one host's installed packages.
type Inventory struct {
	// Ecosystem is the package manager whose database was read: "dpkg",
	// "rpm" or "apk".
	Ecosystem string `json:"ecosystem"`
	OS        OS     `json:"os"`
	// Packages are sorted by name, version and arch (Canonicalize).
	Packages []Package `json:"packages"`
	// Partial lists why the inventory may be incomplete, e.g. stanzas of
	// a malformed dpkg status that were skipped. Empty means complete.
	Partial []string `json:"partial,omitempty"`
}

// Kind returns the version scheme of the inventory's ecosystem.
func (inv *Inventory) Kind() version.Kind {
	k, _ := version.ParseKind(inv.Ecosystem)
	return k
}

// Canonicalize sorts the packages and drops exact duplicates, so the same
// set of packages always has the same digest.
func (inv *Inventory) Canonicalize() {
	slices.SortFunc(inv.Packages, comparePackages)
	inv.Packages = slices.CompactFunc(inv.Packages, func(a, b Package) bool { return a == b })
	slices.Sort(inv.Partial)
	inv.Partial = slices.Compact(inv.Partial)
}

func comparePackages(a, b Package) int {
	return cmp.Or(
		cmp.Compare(a.Name, b.Name),
		cmp.Compare(a.Version, b.Version),
		cmp.Compare(a.Arch, b.Arch),
		cmp.Compare(a.Source, b.Source),
		cmp.Compare(a.SourceVersion, b.SourceVersion),
	)
}

// canonical is what the digest covers: everything that decides a match,
// nothing that is only for display.
type canonical struct {
	Format    int       `json:"format"`
	Ecosystem string    `json:"ecosystem"`
	ID        string    `json:"id"`
	VersionID string    `json:"version_id"`
	Codename  string    `json:"codename"`
	Packages  []Package `json:"packages"`
	Partial   []string  `json:"partial"`
}

// Digest canonicalizes inv and returns "sha256:" and the hex sha256 of its
// canonical JSON form.
func (inv *Inventory) Digest() string {
	inv.Canonicalize()
	b, err := json.Marshal(canonical{
		Format: FormatVersion, Ecosystem: inv.Ecosystem,
		ID: inv.OS.ID, VersionID: inv.OS.VersionID, Codename: inv.OS.Codename,
		Packages: inv.Packages, Partial: inv.Partial,
	})
	if err != nil { // strings and ints only: cannot happen
		panic(fmt.Sprintf("inventory: encoding canonical form: %v", err))
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
