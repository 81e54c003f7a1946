package osv_test

import (
	"archive/zip"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vigil-hids/vigil/vuln/osv"
	"github.com/vigil-hids/vigil/vuln/version"
)

func byID(t *testing.T, r *osv.Result, id string) *osv.Advisory {
	t.Helper()
	for _, a := range r.Advisories {
		if a.ID == id {
			return a
		}
	}
	t.Fatalf("advisory %s not imported", id)
	return nil
}

func TestImportGood(t *testing.T) {
	r, err := osv.Import("testdata/good")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Advisories) != 6 || r.Files != 5 || r.Skipped != 0 || r.Ignored != 0 {
		t.Fatalf("imported %d advisories from %d files, %d skipped %v, %d ignored", len(r.Advisories), r.Files, r.Skipped, r.Errors, r.Ignored)
	}
	deb := byID(t, r, "DEBIAN-CVE-2024-0727")
	if !slices.Equal(deb.CVEs, []string{"CVE-2024-0727"}) || deb.Severity.Level != osv.LevelLow || len(deb.Affected) != 2 {
		t.Errorf("debian advisory %+v", deb)
	}
	if a := deb.Affected[1]; a.Ecosystem != (osv.Ecosystem{Distro: "debian", Release: "12", Kind: version.Dpkg}) ||
		a.Package != "openssl" || len(a.Ranges) != 1 || a.Ranges[0].Fixed != "3.0.13-1~deb12u1" || len(a.Versions) != 2 {
		t.Errorf("debian 12 affected %+v", a)
	}
	ubu := byID(t, r, "UBUNTU-CVE-2024-0727")
	if ubu.Severity.Score != 5.5 || ubu.Severity.Level != osv.LevelMedium || ubu.Affected[1].Ecosystem.Release != "18.04" {
		t.Errorf("ubuntu advisory %+v", ubu)
	}
	rl := byID(t, r, "RLSA-2024:0310")
	if !slices.Equal(rl.CVEs, []string{"CVE-2023-5363", "CVE-2023-5678"}) || rl.Severity.Score != 9.8 || rl.Severity.Level != osv.LevelCritical {
		t.Errorf("rocky advisory %+v", rl)
	}
	rh := byID(t, r, "RHSA-2023:5455")
	if e := rh.Affected[0].Ecosystem; e.Distro != "redhat" || e.Release != "9" || e.Kind != version.RPM || rh.Severity.Level != osv.LevelHigh {
		t.Errorf("red hat advisory %+v", rh)
	}
	if gl := byID(t, r, "DEBIAN-CVE-2023-4911"); gl.Severity.Score != 7.8 {
		t.Errorf("glibc score %v, want 7.8", gl.Severity.Score)
	}
}

func TestImportBadIsSkippedAndCounted(t *testing.T) {
	r, err := osv.Import("testdata/bad", "testdata/good/ALPINE-CVE-2024-0727.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Advisories) != 1 || r.Skipped != 3 || r.Ignored != 2 || !r.Partial() {
		t.Fatalf("advisories %d, skipped %d, ignored %d, errors %v", len(r.Advisories), r.Skipped, r.Ignored, r.Errors)
	}
	var msgs []string
	for _, e := range r.Errors {
		if !errors.Is(e, osv.ErrInvalid) {
			t.Errorf("error %v is not ErrInvalid", e)
		}
		msgs = append(msgs, e.Error())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{
		"testdata/bad/garbage.json: osv: invalid advisory: invalid character",
		"testdata/bad/noid.json: osv: invalid advisory: id: missing",
		`testdata/bad/badversion.json: osv: invalid advisory: DEBIAN-CVE-2099-0001: affected[0].ranges[0].events[1].fixed: version: invalid version: dpkg version "x:1.0"`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("errors\n%s\nwant one saying %q", all, want)
		}
	}
	if _, err := osv.Import("testdata/missing"); err == nil {
		t.Error("Import of a missing path succeeded")
	}
}

func TestImportZip(t *testing.T) {
	zpath := filepath.Join(t.TempDir(), "all.zip")
	f, err := os.Create(zpath)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	for _, name := range []string{"good/DEBIAN-CVE-2024-0727.json", "good/UBUNTU-CVE-2024-0727.json", "bad/garbage.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		w, err := zw.Create(filepath.Base(name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := osv.Import(zpath)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Advisories) != 2 || r.Skipped != 1 || !strings.Contains(r.Errors[0].Error(), "all.zip!garbage.json") {
		t.Errorf("zip: %d advisories, %d skipped: %v", len(r.Advisories), r.Skipped, r.Errors)
	}
	bad := filepath.Join(t.TempDir(), "broken.zip")
	if err := os.WriteFile(bad, []byte("PK not really"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r, err := osv.Import(bad); err != nil || r.Skipped != 1 {
		t.Errorf("broken zip: %v, %+v", err, r)
	}
}

func TestParseEcosystem(t *testing.T) {
	tests := []struct {
		in   string
		want osv.Ecosystem
		err  bool
	}{
		{in: "Debian:12", want: osv.Ecosystem{Distro: "debian", Release: "12", Kind: version.Dpkg}},
		{in: "Debian", want: osv.Ecosystem{Distro: "debian", Kind: version.Dpkg}},
		{in: "Ubuntu:22.04:LTS", want: osv.Ecosystem{Distro: "ubuntu", Release: "22.04", Kind: version.Dpkg}},
		{in: "Ubuntu:Pro:FIPS:20.04:LTS", want: osv.Ecosystem{Distro: "ubuntu", Release: "20.04", Kind: version.Dpkg}},
		{in: "Alpine:v3.19", want: osv.Ecosystem{Distro: "alpine", Release: "3.19", Kind: version.APK}},
		{in: "Red Hat:enterprise_linux:9::appstream", want: osv.Ecosystem{Distro: "redhat", Release: "9", Kind: version.RPM}},
		{in: "Rocky Linux:8", want: osv.Ecosystem{Distro: "rocky", Release: "8", Kind: version.RPM}},
		{in: "AlmaLinux:9", want: osv.Ecosystem{Distro: "almalinux", Release: "9", Kind: version.RPM}},
		{in: "PyPI", err: true},
		{in: "", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := osv.ParseEcosystem(tt.in)
			if tt.err != (err != nil) || got != tt.want {
				t.Errorf("ParseEcosystem(%q) = %+v, %v", tt.in, got, err)
			}
			if err != nil && !errors.Is(err, osv.ErrUnsupportedEcosystem) {
				t.Errorf("error %v is not ErrUnsupportedEcosystem", err)
			}
		})
	}
}

func TestEcosystemMatchesRelease(t *testing.T) {
	tests := []struct {
		name      string
		eco       osv.Ecosystem
		id, verID string
		want      bool
	}{
		{name: "debian 12 on 12", eco: osv.Ecosystem{Distro: "debian", Release: "12"}, id: "debian", verID: "12", want: true},
		{name: "debian 12 not on 11", eco: osv.Ecosystem{Distro: "debian", Release: "12"}, id: "debian", verID: "11"},
		{name: "debian not on ubuntu", eco: osv.Ecosystem{Distro: "debian", Release: "12"}, id: "ubuntu", verID: "12"},
		{name: "alpine minor on point release", eco: osv.Ecosystem{Distro: "alpine", Release: "3.19"}, id: "alpine", verID: "3.19.1", want: true},
		{name: "alpine 3.1 not on 3.19", eco: osv.Ecosystem{Distro: "alpine", Release: "3.1"}, id: "alpine", verID: "3.19.1"},
		{name: "rhel 9 on 9.3", eco: osv.Ecosystem{Distro: "redhat", Release: "9"}, id: "rhel", verID: "9.3", want: true},
		{name: "rhel not on rocky", eco: osv.Ecosystem{Distro: "redhat", Release: "9"}, id: "rocky", verID: "9.3"},
		{name: "no release is every release", eco: osv.Ecosystem{Distro: "debian"}, id: "debian", verID: "11", want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.eco.Matches(tt.id, tt.verID); got != tt.want {
				t.Errorf("%s.Matches(%s, %s) = %t", tt.eco, tt.id, tt.verID, got)
			}
		})
	}
}

func TestAffects(t *testing.T) {
	deb := osv.Ecosystem{Distro: "debian", Release: "12", Kind: version.Dpkg}
	tests := []struct {
		name    string
		a       osv.Affected
		v       string
		want    bool
		fixedIn string
	}{
		{name: "below fixed", a: osv.Affected{Ecosystem: deb, Ranges: []osv.Range{{Fixed: "3.0.13-1~deb12u1"}}}, v: "3.0.11-1~deb12u2", want: true, fixedIn: "3.0.13-1~deb12u1"},
		{name: "at fixed", a: osv.Affected{Ecosystem: deb, Ranges: []osv.Range{{Fixed: "3.0.13-1~deb12u1"}}}, v: "3.0.13-1~deb12u1"},
		{name: "tilde backport below fix", a: osv.Affected{Ecosystem: deb, Ranges: []osv.Range{{Fixed: "3.0.13-1"}}}, v: "3.0.13-1~deb12u1", want: true, fixedIn: "3.0.13-1"},
		{name: "epoch above fix", a: osv.Affected{Ecosystem: deb, Ranges: []osv.Range{{Fixed: "1.5-1"}}}, v: "1:1.0-1"},
		{name: "before introduced", a: osv.Affected{Ecosystem: deb, Ranges: []osv.Range{{Introduced: "2.0", Fixed: "2.5"}}}, v: "1.9"},
		{name: "last affected inclusive", a: osv.Affected{Ecosystem: deb, Ranges: []osv.Range{{LastAffected: "2.0-1"}}}, v: "2.0-1", want: true},
		{name: "after last affected", a: osv.Affected{Ecosystem: deb, Ranges: []osv.Range{{LastAffected: "2.0-1"}}}, v: "2.0-2"},
		{name: "open range", a: osv.Affected{Ecosystem: deb, Ranges: []osv.Range{{Introduced: "0"}}}, v: "99", want: true},
		{name: "listed version", a: osv.Affected{Ecosystem: deb, Versions: []string{"1.0-1"}}, v: "1.0-1", want: true},
		{name: "rpm epoch", a: osv.Affected{Ecosystem: osv.Ecosystem{Kind: version.RPM}, Ranges: []osv.Range{{Fixed: "1:3.0.7-25.el9_3"}}}, v: "1:3.0.7-24.el9", want: true, fixedIn: "1:3.0.7-25.el9_3"},
		{name: "apk revision", a: osv.Affected{Ecosystem: osv.Ecosystem{Kind: version.APK}, Ranges: []osv.Range{{Fixed: "3.1.4-r5"}}}, v: "3.1.4-r5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, fixed := tt.a.Affects(tt.v)
			if got != tt.want || fixed != tt.fixedIn {
				t.Errorf("Affects(%q) = %t, %q; want %t, %q", tt.v, got, fixed, tt.want, tt.fixedIn)
			}
		})
	}
}

func TestCVSS3(t *testing.T) {
	tests := []struct {
		vector string
		want   float64
	}{
		{"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8},
		{"CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", 7.8},
		{"CVSS:3.1/AV:L/AC:L/PR:N/UI:R/S:U/C:N/I:N/A:H", 5.5},
		{"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10},
		{"CVSS:3.0/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N", 5.9},
		{"CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:C/C:L/I:L/A:N", 6.4},
		{"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0},
	}
	for _, tt := range tests {
		t.Run(tt.vector, func(t *testing.T) {
			got, err := osv.CVSS3BaseScore(tt.vector)
			if err != nil || got != tt.want {
				t.Errorf("score %v, %v; want %v", got, err, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "CVSS:2.0/AV:N", "CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:Q/C:H/I:H/A:H"} {
		if _, err := osv.CVSS3BaseScore(bad); err == nil {
			t.Errorf("CVSS3BaseScore(%q) succeeded", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, dir := range []string{"testdata/good", "testdata/bad"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
		for _, name := range files {
			b, err := os.ReadFile(name)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := osv.Parse(b)
		if err != nil {
			if !errors.Is(err, osv.ErrInvalid) && !errors.Is(err, osv.ErrNotApplicable) {
				t.Fatalf("error %v is neither ErrInvalid nor ErrNotApplicable", err)
			}
			return
		}
		if a.ID == "" || len(a.Keys()) == 0 {
			t.Fatalf("advisory without an ID: %+v", a)
		}
		for _, af := range a.Affected {
			af.Affects("1.0")
		}
	})
}
