package server

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server/client"
	"github.com/vigil-hids/vigil/server/pki"
	"github.com/vigil-hids/vigil/vuln/ingest"
	"github.com/vigil-hids/vigil/vuln/inventory"
)

func debian12Upload(host string) *ingest.Upload {
	inv := inventory.Inventory{Ecosystem: "dpkg", OS: inventory.OS{ID: "debian", VersionID: "12", Codename: "bookworm"},
		Packages: []inventory.Package{
			{Name: "libssl3", Version: "3.0.11-1~deb12u2", Source: "openssl"},
			{Name: "openssl", Version: "3.0.11-1~deb12u2"},
			{Name: "zlib1g", Version: "1:1.2.13.dfsg-1", Source: "zlib"},
		}}
	return &ingest.Upload{Host: host, Digest: inv.Digest(), Inventory: inv}
}

// TestVulnAPI runs the ingest and query routes over HTTPS with the roles'
// real certificates: a host posts its digest, uploads the inventory the
// server lacks, a second host of the same image sends only its digest;
// operators query; bad uploads are refused with 4xx and lose nothing.
func TestVulnAPI(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	pd := filepath.Join(t.TempDir(), "pki")
	if _, err := pki.Init(pd, pki.Options{}); err != nil {
		t.Fatal(err)
	}
	files := func(n string) pki.Files {
		return pki.Files{CA: filepath.Join(pd, "ca.crt"), Cert: filepath.Join(pd, n+".crt"), Key: filepath.Join(pd, n+".key")}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, Config{ID: "v1", Listen: "127.0.0.1:0", EtcdEndpoints: e.Endpoints(), TLS: files("server"),
		CheckPlugin: catalog.Validate, Vuln: VulnConfig{Dir: t.TempDir(), OSV: []string{"../vuln/osv/sample"}, MaxUpload: 32 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cl := func(role string) *client.Client {
		c, err := client.New(client.Config{Server: "https://" + s.Addr(), TLS: files(role)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	host, admin, auditor := cl("host"), cl("admin"), cl("auditor")
	tc, err := files("host").ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	raw := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	defer raw.CloseIdleConnections()
	post := func(body []byte, gz bool) (int, string) {
		t.Helper()
		if gz {
			var b bytes.Buffer
			zw := gzip.NewWriter(&b)
			zw.Write(body)
			zw.Close()
			body = b.Bytes()
		}
		req, _ := http.NewRequest("POST", "https://"+s.Addr()+"/v1/vuln/inventory", bytes.NewReader(body))
		if gz {
			req.Header.Set("Content-Encoding", "gzip")
		}
		resp, err := raw.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e struct{ Error, Code string }
		json.NewDecoder(resp.Body).Decode(&e)
		return resp.StatusCode, e.Code + ": " + e.Error
	}

	u := debian12Upload("web-1")
	if ans, err := host.VulnDigest(ctx, ingest.DigestReport{Host: "web-1", Digest: u.Digest}); err != nil || ans.Known {
		t.Fatalf("first digest: %+v %v", ans, err)
	}
	good, _ := json.Marshal(u)
	if code, msg := post(good, true); code != 200 {
		t.Fatalf("gzip upload: %d %s", code, msg)
	}
	if ans, err := host.VulnDigest(ctx, ingest.DigestReport{Host: "web-2", Digest: u.Digest}); err != nil || !ans.Known {
		t.Fatalf("second host's digest: %+v %v", ans, err)
	}

	// Roles: hosts only post; auditors only read.
	var ce *client.Error
	if _, err := auditor.VulnDigest(ctx, ingest.DigestReport{Host: "web-3", Digest: u.Digest}); !errors.As(err, &ce) || ce.Status != 403 {
		t.Fatalf("auditor posting a digest: %v", err)
	}
	if _, err := host.VulnHosts(ctx, "CVE-2024-0727", 0); !errors.As(err, &ce) || ce.Status != 403 {
		t.Fatalf("host querying: %v", err)
	}

	res, err := auditor.VulnHosts(ctx, "CVE-2024-0727", 0)
	if err != nil {
		t.Fatal(err)
	}
	if lim, err := auditor.VulnHosts(ctx, "CVE-2024-0727", 1); err != nil || lim.HostCount != 2 || lim.Shown != 1 || !lim.Truncated ||
		len(lim.Inventories) != 1 || len(lim.Inventories[0].Hosts) != 1 {
		t.Fatalf("limit 1: %+v %v", lim, err)
	}
	if res.HostCount != 2 || len(res.Inventories) != 1 || len(res.Inventories[0].Hits) != 1 {
		t.Fatalf("CVE-2024-0727: %+v", res)
	}
	hit := res.Inventories[0].Hits[0]
	if hit.Package != "openssl" || hit.Installed != "3.0.11-1~deb12u2" || hit.Fixed != "3.0.13-1~deb12u1" || len(hit.Binaries) != 2 {
		t.Fatalf("hit %+v", hit)
	}
	hr, err := auditor.VulnHost(ctx, "web-2")
	if err != nil || len(hr.Hits) != 2 || hr.Hits[0].Advisory != "DEBIAN-CVE-2023-45853" { // critical first
		t.Fatalf("host report %+v %v", hr, err)
	}
	pv, err := auditor.VulnPackage(ctx, "libssl3", "3.0.13-1~deb12u1")
	if err != nil || len(pv.Versions) != 1 || pv.Versions[0].Hosts != 2 {
		t.Fatalf("package below: %+v %v", pv, err)
	}
	if pv, err := auditor.VulnPackage(ctx, "libssl3", "3.0.11-1~deb12u2"); err != nil || len(pv.Versions) != 0 {
		t.Fatalf("package below its own version: %+v %v", pv, err)
	}
	top, err := auditor.VulnTop(ctx, 5)
	if err != nil || len(top.CVEs) != 2 || top.CVEs[0].ID != "CVE-2023-45853" || top.CVEs[0].Hosts != 2 {
		t.Fatalf("top %+v %v", top, err)
	}

	// Bad input: a clear 4xx each, and nothing lost.
	mismatch := debian12Upload("web-1")
	mismatch.Inventory.Packages[0].Version = "3.0.13-1~deb12u1"
	mm, _ := json.Marshal(mismatch)
	unknown := debian12Upload("web-1")
	unknown.Inventory.Ecosystem = "pacman"
	un, _ := json.Marshal(unknown)
	big := debian12Upload("web-1")
	for i := range 2000 {
		big.Inventory.Packages = append(big.Inventory.Packages, inventory.Package{Name: "pkg" + itoa(i*7919), Version: itoa(i*104729) + "-1"})
	}
	big.Digest = big.Inventory.Digest()
	bg, _ := json.Marshal(big)
	for _, tt := range []struct {
		name string
		body []byte
		gz   bool
		code int
		msg  string
	}{
		{"malformed", []byte(`{"host":"web-1",`), false, 400, "invalid: ingest: invalid: malformed JSON"},
		{"digest mismatch", mm, true, 400, "digest_mismatch"},
		{"unknown ecosystem", un, true, 400, `ecosystem "pacman" is unknown`},
		{"oversized", bg, false, 413, "too_large"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, msg := post(tt.body, tt.gz)
			if code != tt.code || !strings.Contains(msg, tt.msg) {
				t.Fatalf("got %d %q, want %d with %q", code, msg, tt.code, tt.msg)
			}
		})
	}
	for _, tt := range []struct {
		id   string
		code int
	}{{"CVE-24-1", 400}, {"not an id", 400}, {"CVE-2099-0001", 404}} {
		if _, err := auditor.VulnHosts(ctx, tt.id, 0); !errors.As(err, &ce) || ce.Status != tt.code {
			t.Errorf("vuln hosts %q: %v, want %d", tt.id, err, tt.code)
		}
	}
	if _, err := auditor.VulnHost(ctx, "nowhere"); !errors.As(err, &ce) || ce.Status != 404 {
		t.Errorf("unknown host: %v", err)
	}
	st, err := admin.VulnStats(ctx)
	if err != nil || st.Index.Inventories != 1 || st.Index.Hosts != 2 || st.UploadsRejected != 4 || st.Uploads != 1 {
		t.Fatalf("stats after bad input %+v %v", st, err)
	}
	if imp, err := admin.VulnReload(ctx); err != nil || imp.Replaced != 7 {
		t.Fatalf("reload %+v %v", imp, err)
	}
	if _, err := auditor.VulnReload(ctx); !errors.As(err, &ce) || ce.Status != 403 {
		t.Fatalf("auditor reload: %v", err)
	}
}
