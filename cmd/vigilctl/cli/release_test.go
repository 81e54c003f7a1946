package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/pki"
	"github.com/vigil-hids/vigil/server/store"
	"github.com/vigil-hids/vigil/signing"
)

// bundle makes a signed linux/amd64 bundle of plugin and version whose
// binary is bin, with vigil-sign's own code.
func bundle(t *testing.T, sec minisign.PrivateKey, plugin, version string, bin []byte) string {
	t.Helper()
	return bundleFor(t, sec, plugin, version, "linux", "amd64", bin)
}

// bundleFor is bundle for another platform.
func bundleFor(t *testing.T, sec minisign.PrivateKey, plugin, version, goos, arch string, bin []byte) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	b := filepath.Join(dir, "bundle")
	if _, err := signing.CreateBundle(b, src, signing.Manifest{Plugin: plugin, Version: version, OS: goos, Arch: arch,
		Expires: time.Now().Add(24 * time.Hour), MinHostVersion: "0.1.0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := signing.SignBundle(b, sec); err != nil {
		t.Fatal(err)
	}
	return b
}

// httpsAs is an HTTPS client presenting role's certificate.
func (f *fixture) httpsAs(t *testing.T, role string) *http.Client {
	t.Helper()
	tc, err := pki.Files{CA: filepath.Join(f.pki, "ca.crt"), Cert: filepath.Join(f.pki, role+".crt"),
		Key: filepath.Join(f.pki, role+".key")}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 30 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func get(t *testing.T, c *http.Client, url, rng string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestReleasePublishAndDownload(t *testing.T) {
	f := start(t)
	_, sec, err := signing.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	bin := bytes.Repeat([]byte("\x7fELF vigil example plugin "), 40000) // ~1 MB
	dir := bundle(t, sec, "example", "1.2.0", bin)
	sm, err := signing.ReadBundleManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	sha := sm.Manifest.SHA256

	if r := f.run(t, "operator", "", "release", "publish", dir); r.code != 1 || !strings.Contains(r.err, "releases are published by admins") {
		t.Fatalf("operator publish: %+v", r)
	}
	out := f.mustRun(t, "admin", "", "release", "publish", dir)
	if !strings.Contains(out, "example 1.2.0 linux/amd64: created") || !strings.Contains(out, "sha256:"+sha) || !strings.Contains(out, " stored") {
		t.Fatalf("publish: %q", out)
	}
	out = f.mustRun(t, "admin", "", "release", "publish", dir)
	if !strings.Contains(out, "unchanged") || !strings.Contains(out, "already stored") {
		t.Fatalf("publish again: %q", out)
	}
	out = f.mustRun(t, "host", "", "release", "ls")
	if !strings.Contains(out, "example") || !strings.Contains(out, "1.2.0") || !strings.Contains(out, sha[:12]) || !strings.Contains(out, signing.KeyID(sec.ID())) {
		t.Fatalf("ls: %q", out)
	}

	// A host downloads with its own certificate, and resumes with a range.
	host := f.httpsAs(t, "host")
	base := "https://" + f.srv.Addr()
	resp, b := get(t, host, base+"/v1/artifacts/"+sha, "")
	if resp.StatusCode != 200 || !bytes.Equal(b, bin) {
		t.Fatalf("download: %d, %d bytes", resp.StatusCode, len(b))
	}
	resp, b = get(t, host, base+"/v1/artifacts/"+sha, fmt.Sprintf("bytes=%d-", len(bin)-1000))
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(b, bin[len(bin)-1000:]) ||
		resp.Header.Get("Content-Range") != fmt.Sprintf("bytes %d-%d/%d", len(bin)-1000, len(bin)-1, len(bin)) {
		t.Fatalf("resume: %d %q, %d bytes", resp.StatusCode, resp.Header.Get("Content-Range"), len(b))
	}
	raw, _ := os.ReadFile(filepath.Join(dir, signing.BundleManifest))
	if resp, b = get(t, host, base+"/v1/releases/example/1.2.0?os=linux&arch=amd64", ""); resp.StatusCode != 200 || !bytes.Equal(b, raw) {
		t.Fatalf("manifest as published: %d\n%s", resp.StatusCode, b)
	}
	if resp, _ = get(t, host, base+"/v1/config", ""); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("host read the operator API: %d", resp.StatusCode)
	}
	if resp, _ = get(t, host, base+"/v1/artifacts/"+strings.Repeat("0", 64), ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("missing artifact: %d", resp.StatusCode)
	}
	if resp, _ = get(t, host, base+"/v1/artifacts/nothex", ""); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad digest: %d", resp.StatusCode)
	}

	// A tampered binary (same length, so only the hash tells) is refused
	// and nothing of it is stored or published.
	evil := bundle(t, sec, "example", "1.3.0", bin)
	tampered := bytes.Clone(bin)
	tampered[500] ^= 0x20
	if err := os.WriteFile(filepath.Join(evil, signing.BundleBinary), tampered, 0o755); err != nil {
		t.Fatal(err)
	}
	r := f.run(t, "admin", "", "release", "publish", evil)
	if r.code != 1 || !strings.Contains(r.err, "content does not match the manifest") {
		t.Fatalf("tampered publish: %+v", r)
	}
	if out := f.mustRun(t, "admin", "", "release", "ls", "example"); strings.Contains(out, "1.3.0") {
		t.Fatalf("a refused release is listed: %q", out)
	}
	// Another binary under a published version: 409, before the upload.
	other := bundle(t, sec, "example", "1.2.0", append(bytes.Clone(bin), "v2"...))
	r = f.run(t, "admin", "", "release", "publish", other)
	if r.code != 1 || !strings.Contains(r.err, "release already published with other content") || !strings.Contains(r.err, "publish a new version") {
		t.Fatalf("duplicate version: %+v", r)
	}
	if resp, b = get(t, host, base+"/v1/releases/example/1.2.0?os=linux&arch=amd64", ""); !bytes.Equal(b, raw) {
		t.Fatal("a refused publish replaced the manifest")
	}

	// The arm64 build of the same version is a publish of its own; both
	// platforms are listed and served.
	armBin := bytes.Repeat([]byte("\x7fELF vigil example plugin, arm64 "), 30000)
	arm := bundleFor(t, sec, "example", "1.2.0", "linux", "arm64", armBin)
	armRaw, _ := os.ReadFile(filepath.Join(arm, signing.BundleManifest))
	if resp, b = get(t, host, base+"/v1/releases/example/1.2.0?os=linux&arch=arm64", ""); resp.StatusCode != http.StatusNotFound ||
		!strings.Contains(string(b), "published for: linux/amd64") {
		t.Fatalf("arm64 manifest before its publish: %d %s", resp.StatusCode, b)
	}
	if out := f.mustRun(t, "admin", "", "release", "publish", arm); !strings.Contains(out, "example 1.2.0 linux/arm64: created") {
		t.Fatalf("publish arm64: %q", out)
	}
	out = f.mustRun(t, "host", "", "release", "ls", "example")
	if !regexp.MustCompile(`(?m)^example +1\.2\.0 +linux/amd64 `).MatchString(out) || !regexp.MustCompile(`(?m)^example +1\.2\.0 +linux/arm64 `).MatchString(out) {
		t.Fatalf("ls with two platforms: %q", out)
	}
	if resp, b = get(t, host, base+"/v1/releases/example/1.2.0?os=linux&arch=arm64", ""); resp.StatusCode != 200 || !bytes.Equal(b, armRaw) {
		t.Fatalf("arm64 manifest as published: %d\n%s", resp.StatusCode, b)
	}
	var vm struct {
		Manifests []struct {
			OS, Arch string
			Manifest signing.SignedManifest
		}
	}
	if resp, b = get(t, host, base+"/v1/releases/example/1.2.0", ""); resp.StatusCode != 200 || json.Unmarshal(b, &vm) != nil ||
		len(vm.Manifests) != 2 || vm.Manifests[0].Arch != "amd64" || vm.Manifests[1].Manifest.Manifest.Arch != "arm64" {
		t.Fatalf("every platform's manifest: %d\n%s", resp.StatusCode, b)
	}
	if resp, b = get(t, host, base+"/v1/releases/example/1.2.0?os=linux", ""); resp.StatusCode != http.StatusBadRequest ||
		!strings.Contains(string(b), "os and arch go together") {
		t.Fatalf("os without arch: %d %s", resp.StatusCode, b)
	}
	// A bundle whose binary is not the manifest's length is refused
	// before anything is sent.
	if err := os.WriteFile(filepath.Join(other, signing.BundleBinary), []byte("short"), 0o755); err != nil {
		t.Fatal(err)
	}
	if r := f.run(t, "admin", "", "release", "publish", other); r.code != 1 || !strings.Contains(r.err, "binary is 5 bytes") {
		t.Fatalf("short bundle: %+v", r)
	}
}

func TestRolloutSetUndoStatus(t *testing.T) {
	f := start(t)
	_, sec, err := signing.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"1.0.0", "1.1.0"} {
		f.mustRun(t, "admin", "", "release", "publish", bundle(t, sec, "example", v, []byte("example "+v)))
	}
	if r := f.run(t, "admin", "", "rollout", "set", "example", "9.9.9"); r.code != 1 || !strings.Contains(r.err, "example 9.9.9 is not published") {
		t.Fatalf("unpublished: %+v", r)
	}
	if r := f.run(t, "admin", "", "rollout", "set", "example", "1.1.0", "--percent", "0"); r.code != 1 || !strings.Contains(r.err, "--percent must be between 1 and 100") {
		t.Fatalf("percent 0: %+v", r)
	}
	if r := f.run(t, "operator", "", "rollout", "set", "example", "1.1.0"); r.code != 1 || !strings.Contains(r.err, "fleet-wide documents are written by admins") {
		t.Fatalf("operator on fleet: %+v", r)
	}
	if out := f.mustRun(t, "admin", "", "rollout", "set", "example", "1.0.0", "--comment", "baseline"); !strings.Contains(out,
		"example 1.0.0 is published for: linux/amd64 (hosts of other platforms report it failed") {
		t.Fatalf("set names the platforms: %q", out)
	}
	out := f.mustRun(t, "admin", "", "rollout", "set", "example", "1.1.0", "--percent", "10", "--comment", "canary")
	if !strings.Contains(out, "fleet: wrote seq 2") || !strings.Contains(out, "rollout example: 1.0.0 -> 1.1.0 on 10% (others 1.0.0): canary") {
		t.Fatalf("set: %q", out)
	}
	f.mustRun(t, "operator", "", "rollout", "set", "example", "1.1.0", "--scope", "group:env=canary")
	var cur store.Current
	if err := json.Unmarshal([]byte(f.mustRun(t, "auditor", "", "config", "get", "-o", "json")), &cur); err != nil {
		t.Fatal(err)
	}
	p := cur.Document.State.Plugins["example"]
	if p.Version != "1.1.0" || p.Rollout == nil || *p.Rollout != (api.Rollout{Percent: 10, From: "1.0.0"}) || cur.Document.Author != "admin" {
		t.Fatalf("fleet document: %+v", cur.Document)
	}
	// Undo moves the canary back to 1.0.0: hosts need a signed rollback.
	if r := f.run(t, "admin", "", "rollout", "undo", "example"); r.code != 1 || !strings.Contains(r.err, "no rollback release of 1.0.0 is published") ||
		!strings.Contains(r.err, "--version 1.0.0+rollback.1") || !strings.Contains(r.err, "vigilctl release publish") {
		t.Fatalf("undo without a rollback release: %+v", r)
	}
	f.mustRun(t, "admin", "", "release", "publish", rollbackBundle(t, sec, "example", "1.0.0+rollback.1", []byte("example 1.0.0")))
	out = f.mustRun(t, "admin", "", "rollout", "undo", "example", "--comment", "crashes")
	if !strings.Contains(out, "fleet: wrote seq 3") || !strings.Contains(out, "-> 1.0.0+rollback.1 (as of seq 1) (1.0.0 as its signed rollback release 1.0.0+rollback.1): crashes") {
		t.Fatalf("undo: %q", out)
	}
	out = f.mustRun(t, "auditor", "", "config", "history")
	for _, want := range []string{"rollout undo example", "canary", "baseline"} {
		if !strings.Contains(out, want) {
			t.Fatalf("history lacks %q: %q", want, out)
		}
	}
	// Status from what hosts report in their registrations.
	cli := f.srv.Store().Client()
	ks := f.srv.Store().Keyspace()
	for i, s := range []api.PluginStatus{
		{Version: "1.1.0", Update: &api.UpdateStatus{Target: "1.1.0", State: api.UpdateInstalled}},
		{Version: "1.0.0", Update: &api.UpdateStatus{Target: "1.1.0", State: api.UpdateRefused, Error: "signing: bad signature"}},
		{Version: "1.0.0"},
	} {
		name := fmt.Sprintf("web-%d", i)
		b, _ := json.Marshal(api.Registration{Host: name, Version: "0.1.0", Plugins: map[string]api.PluginStatus{"example": s}})
		if _, err := cli.Put(context.Background(), ks.Agent(name), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	out = f.mustRun(t, "auditor", "", "rollout", "status", "example", "--watch", "--count", "2", "--interval", "100ms")
	// The fleet now asks for 1.0.0+rollback.1, which none of them runs.
	if strings.Count(out, "example in fleet: 3 hosts, 3 report it") != 2 || !strings.Contains(out, "FAILURES (1)") ||
		!strings.Contains(out, "on target: 0 of the 3 hosts asked for a version, 3 pending") ||
		!strings.Contains(out, "web-1") || !strings.Contains(out, "signing: bad signature") {
		t.Fatalf("status: %q", out)
	}
	if r := f.run(t, "host", "", "rollout", "status", "example"); r.code != 1 || !strings.Contains(r.err, "forbidden") {
		t.Fatalf("host reads status: %+v", r)
	}
}
