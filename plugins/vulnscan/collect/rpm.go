package collect

import (
	"fmt"
	"strconv"
	"strings"

	rpmdb "github.com/knqyf263/go-rpmdb/pkg"
	_ "modernc.org/sqlite" // the pure-Go "sqlite" database/sql driver go-rpmdb opens rpmdb.sqlite with

	"github.com/vigil-hids/vigil/vuln/inventory"
)

// ReadRPM reads an rpm database of any of the three formats rpm has used:
// Berkeley DB ("Packages", RHEL/CentOS 5–8, SUSE before 15), NDB
// ("Packages.db", SUSE 15+) and SQLite ("rpmdb.sqlite", RHEL 9+, Fedora
// 33+). The format is told by the file's magic, not its name. The
// gpg-pubkey pseudo-packages are left out. A corrupt database is an error
// naming the file: CheckRPM first refuses a Berkeley DB or NDB file whose
// pages, chains or lengths go-rpmdb would follow out of bounds or in a
// loop (go-rpmdb reads pages in a goroutine of its own, which no recover
// here covers and which could spin forever); go-rpmdb then stops at the
// first bad record, and a panic while decoding a header is turned into an
// error here.
func ReadRPM(path string) (pkgs []inventory.Package, err error) {
	if err := CheckRPM(path); err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			pkgs, err = nil, fmt.Errorf("reading rpm database %s: decoder panicked: %v", path, r)
		}
	}()
	db, err := rpmdb.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening rpm database %s: %w", path, err)
	}
	defer db.Close()
	list, err := db.ListPackages()
	if err != nil {
		return nil, fmt.Errorf("reading rpm database %s: %w", path, err)
	}
	pkgs = make([]inventory.Package, 0, len(list))
	for _, p := range list {
		if p.Name == "gpg-pubkey" {
			continue
		}
		v := EVR(p.EpochNum(), p.Version, p.Release)
		pk := inventory.Package{Name: p.Name, Version: v, Arch: p.Arch}
		if name, ver, ok := SplitSourceRPM(p.SourceRpm); ok {
			if name != p.Name {
				pk.Source = name
			}
			if ver != v && ver != EVR(0, p.Version, p.Release) {
				pk.SourceVersion = ver
			}
		}
		pkgs = append(pkgs, pk)
	}
	return pkgs, nil
}

// EVR writes an rpm version as "epoch:version-release", leaving out an
// epoch of 0 as rpm -q does.
func EVR(epoch int, ver, rel string) string {
	var b strings.Builder
	if epoch != 0 {
		b.WriteString(strconv.Itoa(epoch))
		b.WriteByte(':')
	}
	b.WriteString(ver)
	if rel != "" {
		b.WriteByte('-')
		b.WriteString(rel)
	}
	return b.String()
}

// SplitSourceRPM splits a SOURCERPM tag such as
// "openssl-3.0.7-24.el9.src.rpm" into the source name "openssl" and
// "3.0.7-24.el9". ok is false when the tag is not of that form.
func SplitSourceRPM(s string) (name, ver string, ok bool) {
	s, found := strings.CutSuffix(s, ".rpm")
	if !found {
		return "", "", false
	}
	if i := strings.LastIndexByte(s, '.'); i > 0 { // arch: src or nosrc
		s = s[:i]
	}
	r := strings.LastIndexByte(s, '-')
	if r <= 0 {
		return "", "", false
	}
	v := strings.LastIndexByte(s[:r], '-')
	if v <= 0 {
		return "", "", false
	}
	return s[:v], s[v+1:], true
}
