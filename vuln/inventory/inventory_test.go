package inventory_test

import (
	"strings"
	"testing"

	"github.com/vigil-hids/vigil/vuln/inventory"
	"github.com/vigil-hids/vigil/vuln/version"
)

func sample() *inventory.Inventory {
	return &inventory.Inventory{
		Ecosystem: "dpkg",
		OS:        inventory.OS{ID: "debian", VersionID: "12", Codename: "bookworm", PrettyName: "Debian GNU/Linux 12 (bookworm)"},
		Packages: []inventory.Package{
			{Name: "libssl3", Version: "3.0.11-1~deb12u2", Arch: "amd64", Source: "openssl"},
			{Name: "bash", Version: "5.2.15-2+b2", Arch: "amd64", SourceVersion: "5.2.15-2"},
		},
	}
}

func TestDigest(t *testing.T) {
	base := sample().Digest()
	if !strings.HasPrefix(base, "sha256:") || len(base) != len("sha256:")+64 {
		t.Fatalf("digest %q", base)
	}
	tests := []struct {
		name   string
		change func(*inventory.Inventory)
		same   bool
	}{
		{name: "package order does not matter", same: true, change: func(inv *inventory.Inventory) {
			inv.Packages[0], inv.Packages[1] = inv.Packages[1], inv.Packages[0]
		}},
		{name: "duplicates do not matter", same: true, change: func(inv *inventory.Inventory) {
			inv.Packages = append(inv.Packages, inv.Packages[0])
		}},
		{name: "pretty name does not matter", same: true, change: func(inv *inventory.Inventory) { inv.OS.PrettyName = "x" }},
		{name: "a version matters", change: func(inv *inventory.Inventory) { inv.Packages[0].Version = "3.0.11-1~deb12u1" }},
		{name: "the source matters", change: func(inv *inventory.Inventory) { inv.Packages[0].Source = "openssl3" }},
		{name: "the release matters", change: func(inv *inventory.Inventory) { inv.OS.VersionID = "11" }},
		{name: "the ecosystem matters", change: func(inv *inventory.Inventory) { inv.Ecosystem = "rpm" }},
		{name: "being partial matters", change: func(inv *inventory.Inventory) { inv.Partial = []string{"status: stanza 3 skipped"} }},
		{name: "a new package matters", change: func(inv *inventory.Inventory) {
			inv.Packages = append(inv.Packages, inventory.Package{Name: "zlib1g", Version: "1:1.2.13.dfsg-1"})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := sample()
			tt.change(inv)
			if got := inv.Digest(); (got == base) != tt.same {
				t.Errorf("digest %s vs base %s: same = %t, want %t", got, base, got == base, tt.same)
			}
		})
	}
}

func TestSourceAndKind(t *testing.T) {
	inv := sample()
	inv.Canonicalize()
	bash, ssl := inv.Packages[0], inv.Packages[1]
	if bash.SourceName() != "bash" || bash.SourceVer() != "5.2.15-2" {
		t.Errorf("bash source = %s %s", bash.SourceName(), bash.SourceVer())
	}
	if ssl.SourceName() != "openssl" || ssl.SourceVer() != "3.0.11-1~deb12u2" {
		t.Errorf("libssl3 source = %s %s", ssl.SourceName(), ssl.SourceVer())
	}
	if inv.Kind() != version.Dpkg {
		t.Errorf("Kind = %s", inv.Kind())
	}
}
