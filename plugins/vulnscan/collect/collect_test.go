package collect_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vigil-hids/vigil/vuln/inventory"

	"github.com/vigil-hids/vigil/plugins/vulnscan/collect"
)

// unpackRPM writes the gzipped fixture name to root/dbpath and an
// os-release saying id.
func unpackRPM(t *testing.T, name, dbpath, id string) string {
	t.Helper()
	root := t.TempDir()
	in, err := os.Open(filepath.Join("testdata", "rpm", name))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	zr, err := gzip.NewReader(in)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(root, dbpath)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, zr); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/os-release"), []byte("ID="+id+"\nVERSION_ID=\"9.3\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestCollect(t *testing.T) {
	tests := []struct {
		name      string
		root      func(t *testing.T) string
		ecosystem string
		os        inventory.OS
		kernel    string
		want      []inventory.Package // a subset, in order
		count     int
	}{
		{
			name: "debian 12 dpkg", root: fixture("debian12"), ecosystem: "dpkg",
			os:     inventory.OS{ID: "debian", VersionID: "12", Codename: "bookworm", PrettyName: "Debian GNU/Linux 12 (bookworm)"},
			kernel: "6.1.0-18-amd64", count: 4,
			want: []inventory.Package{
				{Name: "bash", Version: "5.2.15-2+b2", Arch: "amd64", SourceVersion: "5.2.15-2"},
				{Name: "libssl3", Version: "3.0.11-1~deb12u2", Arch: "amd64", Source: "openssl"},
				{Name: "openssl", Version: "3.0.11-1~deb12u2", Arch: "amd64"},
				{Name: "zlib1g", Version: "1:1.2.13.dfsg-1", Arch: "amd64", Source: "zlib"},
			},
		},
		{
			name: "alpine 3.19 apk", root: fixture("alpine319"), ecosystem: "apk",
			os: inventory.OS{ID: "alpine", VersionID: "3.19.1", PrettyName: "Alpine Linux v3.19"}, count: 3,
			want: []inventory.Package{
				{Name: "busybox", Version: "1.36.1-r15", Arch: "x86_64"},
				{Name: "libcrypto3", Version: "3.1.4-r5", Arch: "x86_64", Source: "openssl"},
				{Name: "musl", Version: "1.2.4_git20230717-r4", Arch: "x86_64"},
			},
		},
		{
			name: "rpm sqlite (RHEL 9)", ecosystem: "rpm", count: 3,
			root: func(t *testing.T) string { return unpackRPM(t, "rpmdb.sqlite.gz", "var/lib/rpm/rpmdb.sqlite", "rhel") },
			os:   inventory.OS{ID: "rhel", VersionID: "9.3"},
			want: []inventory.Package{
				{Name: "bash", Version: "5.1.8-6.el9_1", Arch: "noarch"},
				{Name: "glibc", Version: "2.34-83.el9_3.7", Arch: "noarch"},
				{Name: "openssl-libs", Version: "1:3.0.7-24.el9", Arch: "noarch", Source: "openssl"},
			},
		},
		{
			name: "rpm berkeley db (RHEL 8)", ecosystem: "rpm", count: 1,
			root: func(t *testing.T) string { return unpackRPM(t, "Packages.gz", "var/lib/rpm/Packages", "centos") },
			os:   inventory.OS{ID: "centos", VersionID: "9.3"},
			want: []inventory.Package{{Name: "libuuid", Version: "2.32.1-42.el8_8", Arch: "x86_64", Source: "util-linux"}},
		},
		{
			name: "rpm ndb (SUSE 15)", ecosystem: "rpm", count: 35,
			root: func(t *testing.T) string {
				return unpackRPM(t, "Packages.db.gz", "usr/lib/sysimage/rpm/Packages.db", "sles")
			},
			os: inventory.OS{ID: "sles", VersionID: "9.3"},
			want: []inventory.Package{
				{Name: "bash", Version: "4.4-19.6.1", Arch: "x86_64"},
				{Name: "file-magic", Version: "5.32-7.14.1", Arch: "noarch", Source: "file"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := collect.Collect(tt.root(t))
			if err != nil {
				t.Fatal(err)
			}
			inv := s.Inventory
			if inv.Ecosystem != tt.ecosystem || s.Kernel != tt.kernel || len(inv.Partial) != 0 {
				t.Errorf("ecosystem %q kernel %q partial %q", inv.Ecosystem, s.Kernel, inv.Partial)
			}
			if !equalOS(inv.OS, tt.os) {
				t.Errorf("os = %+v, want %+v", inv.OS, tt.os)
			}
			if len(inv.Packages) != tt.count {
				t.Errorf("%d packages, want %d: %+v", len(inv.Packages), tt.count, inv.Packages)
			}
			for _, w := range tt.want {
				if !slices.Contains(inv.Packages, w) {
					t.Errorf("missing %+v in %+v", w, inv.Packages)
				}
			}
			if !slices.IsSortedFunc(inv.Packages, func(a, b inventory.Package) int { return strings.Compare(a.Name, b.Name) }) {
				t.Error("packages not sorted by name")
			}
		})
	}
}

func equalOS(a, b inventory.OS) bool {
	return a.ID == b.ID && a.VersionID == b.VersionID && a.Codename == b.Codename && a.PrettyName == b.PrettyName && slices.Equal(a.IDLike, b.IDLike)
}

func fixture(name string) func(t *testing.T) string {
	return func(t *testing.T) string {
		root, err := filepath.Abs(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		return root
	}
}

func TestCollectFailures(t *testing.T) {
	if _, err := collect.Collect(fixture("empty")(t)); !errors.Is(err, collect.ErrNoDatabase) {
		t.Errorf("Collect(no database) = %v, want ErrNoDatabase", err)
	}
	// A corrupt rpm database: an error naming the file, never a panic.
	root := t.TempDir()
	db := filepath.Join(root, "var/lib/rpm/Packages")
	if err := os.MkdirAll(filepath.Dir(db), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(db, bytes.Repeat([]byte{0x61, 0x15, 0x06, 0x00}, 1024), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := collect.Collect(root); err == nil || !strings.Contains(err.Error(), db) {
		t.Errorf("Collect(corrupt rpmdb) = %v, want an error naming %s", err, db)
	}
}

// TestRealDpkgStatus reads this machine's own dpkg database (a Debian 12
// host); every stanza dpkg itself wrote must parse.
func TestRealDpkgStatus(t *testing.T) {
	f, err := os.Open("/var/lib/dpkg/status")
	if err != nil {
		t.Fatalf("this test reads the Debian test host's dpkg database: %v", err)
	}
	defer f.Close()
	pkgs, partial, err := collect.ParseDpkgStatus(f)
	if err != nil || len(partial) != 0 {
		t.Fatalf("err %v, partial %q", err, partial)
	}
	if len(pkgs) < 50 {
		t.Fatalf("%d packages on a Debian host", len(pkgs))
	}
	i := slices.IndexFunc(pkgs, func(p inventory.Package) bool { return p.Name == "libc6" })
	if i < 0 || pkgs[i].Source != "glibc" || pkgs[i].Version == "" {
		t.Errorf("libc6 = %+v (index %d)", pkgs, i)
	}
	s, err := collect.Collect("/")
	if err != nil {
		t.Fatal(err)
	}
	if s.Inventory.Ecosystem != "dpkg" || s.Kernel == "" || s.Inventory.OS.ID != "debian" {
		t.Errorf("Collect(/) = %s on %+v, kernel %q", s.Inventory.Ecosystem, s.Inventory.OS, s.Kernel)
	}
}

func TestParseDpkgStatusPartial(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		names   []string
		partial []string
	}{
		{name: "no version", in: "Package: a\nStatus: install ok installed\n\nPackage: b\nStatus: install ok installed\nVersion: 1.0\n",
			names: []string{"b"}, partial: []string{`package "a" has no Version field`}},
		{name: "bad version", in: "Package: a\nStatus: install ok installed\nVersion: x:1\n", partial: []string{`package "a": version: invalid version: dpkg version "x:1"`}},
		{name: "not a field", in: "Package: a\ngarbage\nStatus: install ok installed\nVersion: 1\n", partial: []string{`line 2 is not a field: "garbage"`}},
		{name: "no package", in: "Version: 1\nStatus: install ok installed\n", partial: []string{"no Package field"}},
		{name: "removed is not installed", in: "Package: a\nStatus: deinstall ok config-files\nVersion: 1\n"},
		{name: "continuation and crlf-free blank lines", in: "Package: a\nStatus: install ok installed\nVersion: 1\nDescription: x\n y\n .\n\n\n\nPackage: b\nStatus: install ok installed\nVersion: 2\n", names: []string{"a", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkgs, partial, err := collect.ParseDpkgStatus(strings.NewReader(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, p := range pkgs {
				names = append(names, p.Name)
			}
			if !slices.Equal(names, tt.names) {
				t.Errorf("packages %q, want %q", names, tt.names)
			}
			if len(partial) != len(tt.partial) {
				t.Fatalf("partial %q, want %q", partial, tt.partial)
			}
			for i, w := range tt.partial {
				if !strings.Contains(partial[i], w) {
					t.Errorf("partial[%d] = %q, want it to say %q", i, partial[i], w)
				}
			}
		})
	}
}

func TestParseAPKPartial(t *testing.T) {
	in := "P:good\nV:1.0-r0\no:src\n\nP:bad\nV:1.0-banana\n\nV:1.0\n\nnot a field\nP:x\nV:1\n"
	pkgs, partial, err := collect.ParseAPKInstalled(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) != 1 || pkgs[0] != (inventory.Package{Name: "good", Version: "1.0-r0", Source: "src"}) {
		t.Errorf("packages %+v", pkgs)
	}
	if len(partial) != 3 || !strings.Contains(partial[0], `"bad"`) || !strings.Contains(partial[1], "no P:") || !strings.Contains(partial[2], "not a field") {
		t.Errorf("partial %q", partial)
	}
}

func TestParseOSRelease(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want inventory.OS
	}{
		{name: "ubuntu", in: "NAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nVERSION_CODENAME=jammy\nID=ubuntu\nID_LIKE=debian\n",
			want: inventory.OS{ID: "ubuntu", VersionID: "22.04", Codename: "jammy", IDLike: []string{"debian"}}},
		{name: "rocky single quotes", in: "ID='rocky'\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.3\"\n# comment\nbroken line\n",
			want: inventory.OS{ID: "rocky", VersionID: "9.3", IDLike: []string{"rhel", "centos", "fedora"}}},
		{name: "escaped quote", in: `PRETTY_NAME="A \"B\""` + "\nID=Alpine\n", want: inventory.OS{ID: "alpine", PrettyName: `A "B"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := collect.ParseOSRelease(strings.NewReader(tt.in))
			if err != nil || !equalOS(got, tt.want) {
				t.Errorf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestSplitSourceRPM(t *testing.T) {
	tests := []struct{ name, in, src, ver string }{
		{name: "simple", in: "openssl-3.0.7-24.el9.src.rpm", src: "openssl", ver: "3.0.7-24.el9"},
		{name: "dashes in name", in: "python3-pip-wheel-21.2.3-7.el9.src.rpm", src: "python3-pip-wheel", ver: "21.2.3-7.el9"},
		{name: "nosrc", in: "foo-1-2.nosrc.rpm", src: "foo", ver: "1-2"},
		{name: "no release", in: "foo.src.rpm"},
		{name: "not an rpm", in: "(none)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, ver, ok := collect.SplitSourceRPM(tt.in)
			if ok != (tt.src != "") || src != tt.src || ver != tt.ver {
				t.Errorf("SplitSourceRPM(%q) = %q %q %t", tt.in, src, ver, ok)
			}
		})
	}
}

func FuzzParseDpkgStatus(f *testing.F) {
	seed, err := os.ReadFile("testdata/debian12/var/lib/dpkg/status")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte("Package: a\nStatus: install ok installed\nVersion: 1:2~3-4\nSource: b (5)\n"))
	f.Add([]byte(":\n \n\x00:"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pkgs, _, err := collect.ParseDpkgStatus(bytes.NewReader(b))
		if err != nil {
			return
		}
		for _, p := range pkgs {
			if p.Name == "" || p.Version == "" {
				t.Fatalf("package without name or version: %+v", p)
			}
		}
	})
}

func FuzzParseAPKInstalled(f *testing.F) {
	seed, err := os.ReadFile("testdata/alpine319/lib/apk/db/installed")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte("P:a\nV:1_rc1-r0\n\nP:\nV:\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pkgs, _, err := collect.ParseAPKInstalled(bytes.NewReader(b))
		if err != nil {
			return
		}
		for _, p := range pkgs {
			if p.Name == "" || p.Version == "" {
				t.Fatalf("package without name or version: %+v", p)
			}
		}
	})
}

// BenchmarkCollectHost collects this machine's inventory (dpkg status,
// os-release, kernel) and digests it, as the plugin does on every change.
func BenchmarkCollectHost(b *testing.B) {
	var n int
	for b.Loop() {
		s, err := collect.Collect("/")
		if err != nil {
			b.Fatal(err)
		}
		_ = s.Inventory.Digest()
		n = len(s.Inventory.Packages)
	}
	b.ReportMetric(float64(n), "packages")
}

// TestPartialReasonsBounded: both parsers list ten reasons and count the
// rest, in the shared paragraph loop.
func TestPartialReasonsBounded(t *testing.T) {
	dpkg := strings.Repeat("Package: a\nStatus: install ok installed\n\n", 12) + "Package: b\nStatus: install ok installed\nVersion: 1\n"
	apk := strings.Repeat("P:a\nV:1.0-banana\n\n", 12) + "P:b\nV:1-r0\n"
	for _, tt := range []struct {
		name, in, last string
		parse          func(io.Reader) ([]inventory.Package, []string, error)
	}{
		{name: "dpkg", in: dpkg, parse: collect.ParseDpkgStatus, last: "dpkg status: 2 more stanzas skipped"},
		{name: "apk", in: apk, parse: collect.ParseAPKInstalled, last: "apk installed: 2 more paragraphs skipped"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pkgs, partial, err := tt.parse(strings.NewReader(tt.in))
			if err != nil || len(pkgs) != 1 || pkgs[0].Name != "b" {
				t.Fatalf("packages %+v, %v", pkgs, err)
			}
			if len(partial) != 11 || partial[10] != tt.last || !strings.Contains(partial[0], "ending at line 3 skipped") {
				t.Errorf("partial %q", partial)
			}
		})
	}
}
