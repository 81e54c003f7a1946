package vulnstore

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/vuln/index"
	"github.com/vigil-hids/vigil/vuln/ingest"
	"github.com/vigil-hids/vigil/vuln/inventory"
)

const sampleOSV = "../../vuln/osv/sample"

// debian12 is an inventory behind the openssl fix of CVE-2024-0727.
func debian12(extra ...inventory.Package) inventory.Inventory {
	return inventory.Inventory{Ecosystem: "dpkg", OS: inventory.OS{ID: "debian", VersionID: "12", Codename: "bookworm"},
		Packages: append([]inventory.Package{
			{Name: "libssl3", Version: "3.0.11-1~deb12u2", Source: "openssl"},
			{Name: "openssl", Version: "3.0.11-1~deb12u2"},
			{Name: "bash", Version: "5.2.15-2+b2", Source: "bash", SourceVersion: "5.2.15-2"},
		}, extra...)}
}

func upload(host string, inv inventory.Inventory) *ingest.Upload {
	d := inv.Digest()
	return &ingest.Upload{Host: host, Digest: d, Inventory: inv}
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func open(t *testing.T, dir string, c *clock) *Service {
	t.Helper()
	s, err := Open(Config{Dir: dir, OSV: []string{sampleOSV}, OfflineAfter: time.Hour, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func hostsOf(t *testing.T, x *index.Index, cve string) []string {
	t.Helper()
	res, err := x.HostsForCVE(cve)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, inv := range res.Inventories {
		out = append(out, inv.Hosts...)
	}
	slices.Sort(out)
	return out
}

func TestDigestThenUploadThenRestart(t *testing.T) {
	dir, c := t.TempDir(), &clock{time.Unix(1_800_000_000, 0)}
	s := open(t, dir, c)
	u := upload("web-1", debian12())
	ans, err := s.Digest(ingest.DigestReport{Host: "web-1", Digest: u.Digest})
	if err != nil || ans.Known {
		t.Fatalf("first digest: %+v %v", ans, err)
	}
	up, err := s.Ingest(u)
	if err != nil || !up.Added || up.Packages != 3 {
		t.Fatalf("upload: %+v %v", up, err)
	}
	// A second host from the same image sends only its digest.
	if ans, err := s.Digest(ingest.DigestReport{Host: "web-2", Digest: u.Digest}); err != nil || !ans.Known {
		t.Fatalf("second digest: %+v %v", ans, err)
	}
	if got := hostsOf(t, s.Index(), "CVE-2024-0727"); !slices.Equal(got, []string{"web-1", "web-2"}) {
		t.Fatalf("CVE-2024-0727 hosts %v", got)
	}
	st := s.Stats()
	if st.Uploads != 1 || st.UploadsNew != 1 || st.DigestsReceived != 2 || st.DigestsKnown != 1 || st.Index.Inventories != 1 || st.Advisories.Added != 7 {
		t.Fatalf("stats %+v", st)
	}
	// A host moving to another inventory.
	u3 := upload("web-2", debian12(inventory.Package{Name: "zlib1g", Version: "1:1.2.13.dfsg-1", Source: "zlib"}))
	if _, err := s.Ingest(u3); err != nil {
		t.Fatal(err)
	}
	if got := hostsOf(t, s.Index(), "CVE-2023-45853"); !slices.Equal(got, []string{"web-2"}) {
		t.Fatalf("CVE-2023-45853 hosts %v", got)
	}
	s.Close()

	// Restart: the index is rebuilt from disk.
	s2 := open(t, dir, c)
	if got := hostsOf(t, s2.Index(), "CVE-2024-0727"); !slices.Equal(got, []string{"web-1", "web-2"}) {
		t.Fatalf("after restart, CVE-2024-0727 hosts %v", got)
	}
	if got := hostsOf(t, s2.Index(), "CVE-2023-45853"); !slices.Equal(got, []string{"web-2"}) {
		t.Fatalf("after restart, CVE-2023-45853 hosts %v", got)
	}
	if ans, _ := s2.Digest(ingest.DigestReport{Host: "web-9", Digest: u.Digest}); !ans.Known {
		t.Fatal("stored digest unknown after restart")
	}
	if st := s2.Stats().Index; st.Inventories != 2 || st.Hosts != 3 {
		t.Fatalf("after restart: %+v", st)
	}
}

func TestBadUploadsStoreNothing(t *testing.T) {
	dir, c := t.TempDir(), &clock{time.Unix(1_800_000_000, 0)}
	s := open(t, dir, c)
	mismatch := upload("web-1", debian12())
	mismatch.Inventory.Packages[0].Version = "3.0.13-1~deb12u1" // no longer what the digest covers
	unknown := upload("web-1", debian12())
	unknown.Inventory.Ecosystem = "pacman"
	tests := []struct {
		name string
		u    *ingest.Upload
		want error
		msg  string
	}{
		{"digest mismatch", mismatch, ingest.ErrDigestMismatch, "digests to sha256:"},
		{"unknown ecosystem", unknown, ingest.ErrInvalid, `"pacman" is unknown`},
		{"bad host", upload("-x y", debian12()), ingest.ErrInvalid, "not a valid host name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Ingest(tt.u)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %v, want %v with %q", err, tt.want, tt.msg)
			}
		})
	}
	if st := s.Stats(); st.Index.Inventories != 0 || st.Index.Hosts != 0 || st.UploadsRejected != 3 {
		t.Fatalf("stats after refusals %+v", st)
	}
	// The good upload still goes through.
	if _, err := s.Ingest(upload("web-1", debian12())); err != nil {
		t.Fatal(err)
	}
}

func TestPruneDropsLongUnregisteredHosts(t *testing.T) {
	dir, c := t.TempDir(), &clock{time.Unix(1_800_000_000, 0)}
	s := open(t, dir, c)
	for _, h := range []string{"a", "b"} {
		if _, err := s.Ingest(upload(h, debian12())); err != nil {
			t.Fatal(err)
		}
	}
	registered := map[string]bool{"a": true}
	reg := func(h string) (bool, error) { return registered[h], nil }
	if d, _ := s.Prune(reg); len(d) != 0 {
		t.Fatalf("dropped at once: %v", d)
	}
	c.t = c.t.Add(59 * time.Minute)
	if d, _ := s.Prune(reg); len(d) != 0 {
		t.Fatalf("dropped before offline_after: %v", d)
	}
	c.t = c.t.Add(2 * time.Minute)
	if d, _ := s.Prune(reg); !slices.Equal(d, []string{"b"}) {
		t.Fatalf("dropped %v, want [b]", d)
	}
	// A host that reports is kept even without a registration.
	if _, err := s.Ingest(upload("c", debian12())); err != nil {
		t.Fatal(err)
	}
	c.t = c.t.Add(30 * time.Minute)
	s.Prune(reg) // c is marked missing now
	c.t = c.t.Add(50 * time.Minute)
	if _, err := s.Digest(ingest.DigestReport{Host: "c", Digest: upload("c", debian12()).Digest}); err != nil {
		t.Fatal(err)
	}
	c.t = c.t.Add(20 * time.Minute)
	if d, _ := s.Prune(reg); len(d) != 0 {
		t.Fatalf("dropped %v although c reported 20 minutes ago", d)
	}
	// The registry re-listing decides nothing.
	if _, err := s.Prune(func(string) (bool, error) { return false, errors.New("not synced") }); err == nil {
		t.Fatal("no error while the registry cannot tell")
	}
	if got := hostsOf(t, s.Index(), "CVE-2024-0727"); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("hosts %v", got)
	}
	s.Close()
	s2 := open(t, dir, c)
	if got := hostsOf(t, s2.Index(), "CVE-2024-0727"); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("after restart, hosts %v", got)
	}
}

func TestOpenRefuses(t *testing.T) {
	if _, err := Open(Config{}); err == nil || !strings.Contains(err.Error(), "vuln dir must be set") {
		t.Fatalf("no dir: %v", err)
	}
	if _, err := Open(Config{Dir: t.TempDir(), OSV: []string{filepath.Join(t.TempDir(), "missing")}}); err == nil ||
		!strings.Contains(err.Error(), "importing advisories") {
		t.Fatalf("missing OSV path: %v", err)
	}
}
