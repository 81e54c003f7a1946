package index_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/vigil-hids/vigil/vuln/index"
	"github.com/vigil-hids/vigil/vuln/inventory"
	"github.com/vigil-hids/vigil/vuln/osv"
)

type fleetHost struct {
	name string
	inv  *inventory.Inventory
}

func deb(release string, pkgs ...inventory.Package) *inventory.Inventory {
	return &inventory.Inventory{Ecosystem: "dpkg", OS: inventory.OS{ID: "debian", VersionID: release}, Packages: pkgs}
}

// fleet is a small fleet over the OSV fixtures of package osv.
func fleet() []fleetHost {
	bookworm := func() *inventory.Inventory {
		return deb("12",
			inventory.Package{Name: "libssl3", Version: "3.0.11-1~deb12u2", Arch: "amd64", Source: "openssl"},
			inventory.Package{Name: "openssl", Version: "3.0.11-1~deb12u2", Arch: "amd64"},
			inventory.Package{Name: "libc6", Version: "2.36-9+deb12u4", Arch: "amd64", Source: "glibc"},
		)
	}
	return []fleetHost{
		{"web-1", bookworm()},
		{"web-2", bookworm()}, // same image: same digest
		{"bullseye", deb("11",
			inventory.Package{Name: "libssl1.1", Version: "1.1.1w-0+deb11u1", Source: "openssl"},
			inventory.Package{Name: "libc6", Version: "2.31-13+deb11u5", Source: "glibc"})},
		{"patched", deb("12",
			inventory.Package{Name: "libssl3", Version: "3.0.13-1~deb12u1", Source: "openssl"},
			inventory.Package{Name: "libc6", Version: "2.36-9+deb12u1", Source: "glibc"})},
		{"jammy", &inventory.Inventory{Ecosystem: "dpkg", OS: inventory.OS{ID: "ubuntu", VersionID: "22.04"}, Packages: []inventory.Package{
			{Name: "libssl3", Version: "3.0.2-0ubuntu1.10", Source: "openssl"}}}},
		{"alpine", &inventory.Inventory{Ecosystem: "apk", OS: inventory.OS{ID: "alpine", VersionID: "3.19.1"}, Packages: []inventory.Package{
			{Name: "libcrypto3", Version: "3.1.4-r4", Source: "openssl"}, {Name: "musl", Version: "1.2.4_git20230717-r4"}}}},
		{"rocky", &inventory.Inventory{Ecosystem: "rpm", OS: inventory.OS{ID: "rocky", VersionID: "9.3"}, Packages: []inventory.Package{
			{Name: "openssl-libs", Version: "1:3.0.7-24.el9", Source: "openssl"}, {Name: "glibc", Version: "2.34-60.el9"}}}},
		{"rhel", &inventory.Inventory{Ecosystem: "rpm", OS: inventory.OS{ID: "rhel", VersionID: "9.3"}, Packages: []inventory.Package{
			{Name: "openssl-libs", Version: "1:3.0.7-27.el9", Source: "openssl"}, {Name: "glibc", Version: "2.34-60.el9"}}}},
	}
}

func advisories(t testing.TB) []*osv.Advisory {
	t.Helper()
	r, err := osv.Import("../osv/testdata/good")
	if err != nil || r.Skipped != 0 {
		t.Fatalf("importing fixtures: %v, %v", err, r.Errors)
	}
	return r.Advisories
}

func build(t testing.TB, advisoriesFirst bool) *index.Index {
	t.Helper()
	x := index.New()
	if advisoriesFirst {
		x.AddAdvisories(advisories(t))
	}
	for _, h := range fleet() {
		d, _, err := x.AddInventory(h.inv)
		if err != nil {
			t.Fatal(err)
		}
		if err := x.SetHost(h.name, d); err != nil {
			t.Fatal(err)
		}
	}
	if !advisoriesFirst {
		if res := x.AddAdvisories(advisories(t)); res.Added != 6 {
			t.Fatalf("import %+v", res)
		}
	}
	return x
}

func hostsOf(c *index.CVEHosts) []string {
	var out []string
	for _, inv := range c.Inventories {
		out = append(out, inv.Hosts...)
	}
	slices.Sort(out)
	return out
}

// TestMatching checks the same answers whether the inventories or the
// advisories came first: ingest matching and the whole-fleet re-match
// must agree.
func TestMatching(t *testing.T) {
	for _, first := range []bool{true, false} {
		name := "inventories first"
		if first {
			name = "advisories first"
		}
		t.Run(name, func(t *testing.T) {
			x := build(t, first)
			tests := []struct {
				cve   string
				hosts []string
			}{
				// Debian 12 and 11, Ubuntu and Alpine advisories name the
				// source "openssl"; the patched host is at the fixed version;
				// the Rocky advisory is for other CVEs; the RHEL host's
				// openssl is no Debian package.
				{cve: "CVE-2024-0727", hosts: []string{"alpine", "bullseye", "jammy", "web-1", "web-2"}},
				// Debian 12 glibc (Debian 11 is not in the advisory), and Red
				// Hat's advisory applies to RHEL only, not to Rocky.
				{cve: "CVE-2023-4911", hosts: []string{"patched", "rhel"}},
				{cve: "CVE-2023-5678", hosts: []string{"rocky"}},
				{cve: "RLSA-2024:0310", hosts: []string{"rocky"}},
			}
			for _, tt := range tests {
				c, err := x.HostsForCVE(tt.cve)
				if err != nil {
					t.Fatal(err)
				}
				if got := hostsOf(c); !slices.Equal(got, tt.hosts) || c.HostCount != len(tt.hosts) {
					t.Errorf("%s: hosts %q (count %d), want %q", tt.cve, got, c.HostCount, tt.hosts)
				}
				for _, inv := range c.Inventories {
					if len(inv.Hits) != 1 || inv.Hits[0].Installed == "" || inv.Hits[0].Fixed == "" {
						t.Errorf("%s on %q: hits %+v, want one with installed and fixed versions", tt.cve, inv.Hosts, inv.Hits)
					}
				}
			}

			rep, err := x.CVEsForHost("web-1")
			if err != nil {
				t.Fatal(err)
			}
			want := index.Hit{
				Advisory: "DEBIAN-CVE-2024-0727", CVEs: []string{"CVE-2024-0727"}, Severity: osv.Severity{Level: osv.LevelLow},
				Ecosystem: "debian:12", Package: "openssl", Binaries: []string{"libssl3", "openssl"},
				Installed: "3.0.11-1~deb12u2", Fixed: "3.0.13-1~deb12u1",
			}
			if len(rep.Hits) != 1 || !equalHit(rep.Hits[0], want) || rep.OS != "debian 12" || rep.Packages != 3 {
				t.Errorf("web-1: %+v, want one hit %+v", rep, want)
			}
			rep, _ = x.CVEsForHost("bullseye")
			if len(rep.Hits) != 1 || rep.Hits[0].Fixed != "1.1.1w-0+deb11u2" || rep.Hits[0].Ecosystem != "debian:11" {
				t.Errorf("bullseye: the Debian 11 fix applies, got %+v", rep.Hits)
			}
			rep, _ = x.CVEsForHost("rocky")
			if len(rep.Hits) != 1 || rep.Hits[0].Installed != "1:3.0.7-24.el9" || rep.Hits[0].Fixed != "1:3.0.7-25.el9_3" || rep.Hits[0].Package != "openssl-libs" {
				t.Errorf("rocky: %+v", rep.Hits)
			}
			rep, _ = x.CVEsForHost("patched")
			if len(rep.Hits) != 1 || rep.Hits[0].Advisory != "DEBIAN-CVE-2023-4911" || rep.Hits[0].Severity.Score != 7.8 {
				t.Errorf("patched: %+v", rep.Hits)
			}

			top := x.Top(2)
			if len(top) != 2 || top[0].ID != "CVE-2024-0727" || top[0].Hosts != 5 || top[0].Inventories != 4 || top[1].Hosts != 2 {
				t.Errorf("top %+v", top)
			}
		})
	}
}

func equalHit(a, b index.Hit) bool {
	return a.Advisory == b.Advisory && slices.Equal(a.CVEs, b.CVEs) && a.Severity == b.Severity && a.Ecosystem == b.Ecosystem &&
		a.Package == b.Package && slices.Equal(a.Binaries, b.Binaries) && a.Installed == b.Installed && a.Fixed == b.Fixed
}

func TestHostsAndDigests(t *testing.T) {
	x := build(t, true)
	if s := x.Stats(); s.Hosts != 8 || s.Inventories != 7 {
		t.Errorf("stats %+v: 8 hosts over 7 inventories (web-1 and web-2 share one)", s)
	}
	// web-2 is upgraded to the patched image: it leaves the CVE.
	patched := fleet()[3].inv
	d, added, err := x.AddInventory(patched)
	if err != nil || added {
		t.Fatalf("AddInventory(known) = %v, added %t", err, added)
	}
	if !x.HasInventory(d) {
		t.Fatal("HasInventory false for a stored digest")
	}
	if err := x.SetHost("web-2", d); err != nil {
		t.Fatal(err)
	}
	c, _ := x.HostsForCVE("CVE-2024-0727")
	if got := hostsOf(c); slices.Contains(got, "web-2") || !slices.Contains(got, "web-1") {
		t.Errorf("after upgrade: %q", got)
	}
	x.RemoveHost("web-1")
	x.RemoveHost("no-such-host")
	if _, err := x.CVEsForHost("web-1"); !errors.Is(err, index.ErrUnknownHost) {
		t.Errorf("removed host: %v", err)
	}
	if c, _ := x.HostsForCVE("CVE-2024-0727"); slices.Contains(hostsOf(c), "web-1") {
		t.Errorf("removed host still listed: %q", hostsOf(c))
	}
	if err := x.SetHost("new", "sha256:nope"); !errors.Is(err, index.ErrUnknownDigest) {
		t.Errorf("SetHost(unknown digest) = %v", err)
	}
	if _, err := x.HostsForCVE("CVE-1999-0001"); !errors.Is(err, index.ErrUnknownCVE) {
		t.Errorf("unknown CVE: %v", err)
	}
	if _, _, err := x.AddInventory(&inventory.Inventory{Ecosystem: "pacman"}); err == nil {
		t.Error("unknown ecosystem accepted")
	}
}

func TestPackages(t *testing.T) {
	x := build(t, false)
	all := x.Packages("libssl3", "")
	if len(all) != 3 {
		t.Fatalf("libssl3 versions %+v", all)
	}
	// dpkg order: the Ubuntu version, then the two Debian ones, ~ first.
	if all[0].Version != "3.0.2-0ubuntu1.10" || all[1].Version != "3.0.11-1~deb12u2" || all[1].Hosts != 2 || all[1].Inventories != 1 {
		t.Errorf("libssl3 %+v", all)
	}
	below := x.Packages("libssl3", "3.0.13-1~deb12u1")
	if len(below) != 2 || slices.ContainsFunc(below, func(p index.PackageVersion) bool { return p.Version == "3.0.13-1~deb12u1" }) {
		t.Errorf("below 3.0.13-1~deb12u1: %+v", below)
	}
	if got := x.Packages("nope", ""); len(got) != 0 {
		t.Errorf("unknown package: %+v", got)
	}
}

// TestReimportReplaces: an advisory imported again with a new fix
// replaces the old one.
func TestReimportReplaces(t *testing.T) {
	x := build(t, false)
	advs, err := osv.Import("../osv/testdata/good/ALPINE-CVE-2024-0727.json")
	if err != nil {
		t.Fatal(err)
	}
	a := advs.Advisories[0]
	a.Affected[0].Ranges[0].Fixed = "3.1.4-r3" // the alpine host's r4 is now fixed
	if res := x.AddAdvisories([]*osv.Advisory{a}); res.Replaced != 1 || res.Added != 0 {
		t.Fatalf("reimport %+v", res)
	}
	c, _ := x.HostsForCVE("CVE-2024-0727")
	if slices.Contains(hostsOf(c), "alpine") {
		t.Errorf("alpine still affected after the fix moved: %q", hostsOf(c))
	}
}

// TestIngestAndRematchAgree builds one synthetic fleet twice, advisories
// before and after the inventories, and compares every CVE's hosts: the
// ingest-time matching and the whole-fleet re-match must not differ.
func TestIngestAndRematchAgree(t *testing.T) {
	s := &synth{hosts: 500, invs: 40, pkgs: 200, advs: 600}
	s.names = s.pkgs * 4
	build := func(advFirst bool) *index.Index {
		x := index.New()
		advs := make([]*osv.Advisory, s.advs)
		for i := range advs {
			advs[i] = s.advisory(i)
		}
		if advFirst {
			x.AddAdvisories(advs)
		}
		var digests []string
		for i := range s.invs {
			d, _, err := x.AddInventory(s.inventory(i))
			if err != nil {
				t.Fatal(err)
			}
			digests = append(digests, d)
		}
		for h := range s.hosts {
			if err := x.SetHost(fmt.Sprintf("host-%d", h), digests[h%len(digests)]); err != nil {
				t.Fatal(err)
			}
		}
		if !advFirst {
			x.AddAdvisories(advs)
		}
		return x
	}
	a, b := build(true), build(false)
	sa, sb := a.Stats(), b.Stats()
	sa.Versions, sb.Versions = 0, 0 // fixed versions are interned as they are first matched
	if sa != sb || sa.Hits == 0 {
		t.Fatalf("stats differ or no hits: %+v vs %+v", sa, sb)
	}
	ta, tb := a.Top(0), b.Top(0)
	if !slices.Equal(ta, tb) || len(ta) == 0 {
		t.Fatalf("top differs: %d vs %d CVEs", len(ta), len(tb))
	}
	for _, c := range ta[:min(len(ta), 50)] {
		ha, _ := a.HostsForCVE(c.ID)
		hb, _ := b.HostsForCVE(c.ID)
		if !slices.Equal(hostsOf(ha), hostsOf(hb)) || ha.HostCount != c.Hosts {
			t.Errorf("%s: %d vs %d hosts (top says %d)", c.ID, ha.HostCount, hb.HostCount, c.Hosts)
		}
	}
}
