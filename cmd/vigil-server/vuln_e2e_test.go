package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/cmd/vigilctl/cli"
	"github.com/vigil-hids/vigil/host/agent"
	"github.com/vigil-hids/vigil/host/config"
	"github.com/vigil-hids/vigil/host/control"
	"github.com/vigil-hids/vigil/host/logging"
	"github.com/vigil-hids/vigil/host/vulnreport"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server"
	"github.com/vigil-hids/vigil/server/pki"
	"github.com/vigil-hids/vigil/vuln/index"
)

// fakeRoot copies the Debian 12 fixture (dpkg status, os-release, kernel)
// into a root of its own, as vulnscan's `root` reads it.
func fakeRoot(t *testing.T) string {
	t.Helper()
	src := "../../plugins/vulnscan/collect/testdata/debian12"
	dst := t.TempDir()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if fi.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestVulnEndToEnd: vigil-server (embedded etcd, TLS, RBAC, the bundled
// OSV sample) and two real vigil-host agents, each running the real
// vulnscan plugin binary over a fake Debian 12 root with the same
// packages. The first host's inventory reaches the server (digest, then
// the full upload it asks for) and `vigilctl vuln hosts CVE-2024-0727`
// names it with the installed and fixed version; the second host, built
// from the same "image", sends only its digest: the server saw one full
// upload.
func TestVulnEndToEnd(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	build := exec.Command("go", "build", "-o", bin+"/", "../../plugins/vulnscan/cmd/vigil-vulnscan")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building vigil-vulnscan: %v\n%s", err, out)
	}
	pd, data := filepath.Join(dir, "pki"), filepath.Join(dir, "data")
	ports, err := etcdtest.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	curl, purl := fmt.Sprintf("http://127.0.0.1:%d", ports[0]), fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	root := newRoot()
	root.SetOut(&bytes.Buffer{})
	root.SetArgs([]string{"init", "--dir", pd, "--data-dir", data, "--etcd-client-url", curl, "--etcd-peer-url", purl})
	if err := root.Execute(); err != nil {
		t.Fatalf("init: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := server.Start(ctx, server.Config{ID: "r1", Listen: "127.0.0.1:0", DataDir: data, EtcdClientURL: curl, EtcdPeerURL: purl,
		TLS:         pki.Files{CA: filepath.Join(pd, "ca.crt"), Cert: filepath.Join(pd, "server.crt"), Key: filepath.Join(pd, "server.key")},
		CheckPlugin: catalog.Validate, Vuln: server.VulnConfig{OSV: []string{"../../vuln/osv/sample"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	startHost := func(name string) *agent.Agent {
		hd := filepath.Join(dir, name)
		cfg := config.Default()
		cfg.HostName = name
		cfg.StateDir, cfg.RunDir = filepath.Join(hd, "state"), filepath.Join(hd, "run")
		cfg.Log = logging.Config{Level: "debug", File: filepath.Join(hd, "host.log")}
		cfg.Sinks.File.Path = filepath.Join(hd, "events.ndjson")
		// Two hosts share this machine: no per-plugin cgroups, which would
		// be named alike.
		cfg.Governance.Cgroups = false
		cfg.Control = &control.Config{Endpoints: []string{strings.Replace(curl, "http:", "https:", 1)},
			CAFile: filepath.Join(pd, "ca.crt"), CertFile: filepath.Join(pd, "host.crt"), KeyFile: filepath.Join(pd, "host.key")}
		cfg.Server = &config.Server{URL: "https://" + s.Addr()}
		cfg.Plugins = []config.Plugin{{Name: "vulnscan", Path: filepath.Join(bin, "vigil-vulnscan"),
			Config: map[string]any{"root": fakeRoot(t), "settle": "100ms"}}}
		log, err := logging.New(cfg.Log)
		if err != nil {
			t.Fatal(err)
		}
		a, err := agent.Start(ctx, cfg, agent.Options{Version: "test", Log: log.Logger, PluginLog: logging.HCLog(log.Logger, "")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			a.Close()
			log.Close()
		})
		return a
	}
	env := func(k string) string {
		return map[string]string{"VIGIL_SERVER": "https://" + s.Addr(), "VIGIL_CA": filepath.Join(pd, "ca.crt"),
			"VIGIL_CERT": filepath.Join(pd, "operator.crt"), "VIGIL_KEY": filepath.Join(pd, "operator.key")}[k]
	}
	run := func(args ...string) (int, string) {
		var out, errb bytes.Buffer
		code := cli.Run(args, cli.Streams{In: strings.NewReader(""), Out: &out, Err: &errb}, env)
		return code, out.String() + errb.String()
	}
	exposed := func(host string) bool {
		code, out := run("vuln", "hosts", "CVE-2024-0727", "-o", "json")
		if code != 0 {
			return false
		}
		var res index.CVEHosts
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("vuln hosts -o json: %v\n%s", err, out)
		}
		for _, inv := range res.Inventories {
			for _, h := range inv.Hosts {
				if h == host {
					return true
				}
			}
		}
		return false
	}
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(90 * time.Second); !cond(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}

	h1 := startHost("vuln-e2e-1")
	waitUntil("vuln-e2e-1 in `vuln hosts CVE-2024-0727`", func() bool { return exposed("vuln-e2e-1") })
	code, out := run("vuln", "hosts", "CVE-2024-0727")
	if code != 0 || !strings.Contains(out, "vuln-e2e-1") || !strings.Contains(out, "3.0.11-1~deb12u2") || !strings.Contains(out, "3.0.13-1~deb12u1") {
		t.Fatalf("vuln hosts (text): exit %d\n%s", code, out)
	}
	// The server indexes a report before the host's reporter has its
	// answer and counts it: wait for the reporter to finish its report.
	reported := func(a *agent.Agent) vulnreport.Stats {
		t.Helper()
		var st vulnreport.Stats
		waitUntil("the reporter's report done", func() bool {
			st, _ = a.VulnReport()
			return !st.LastReported.IsZero()
		})
		return st
	}
	if st := reported(h1); st.Uploads != 1 {
		t.Fatalf("first host's reporter: %+v", st)
	}

	h2 := startHost("vuln-e2e-2")
	waitUntil("vuln-e2e-2 in `vuln hosts CVE-2024-0727`", func() bool { return exposed("vuln-e2e-2") })
	if st := reported(h2); st.Uploads != 0 || st.DigestsSent == 0 {
		t.Fatalf("second host uploaded its inventory: %+v", st)
	}
	vs := s.Vuln().Stats()
	if vs.UploadsNew != 1 || vs.Uploads != 1 || vs.Index.Inventories != 1 || vs.Index.Hosts != 2 || vs.DigestsKnown == 0 {
		t.Fatalf("server saw %+v, want one full upload", vs)
	}
	code, out = run("vuln", "host", "vuln-e2e-2")
	if code != 0 || !strings.Contains(out, "DEBIAN-CVE-2024-0727") || !strings.Contains(out, "DEBIAN-CVE-2023-45853") {
		t.Fatalf("vuln host: exit %d\n%s", code, out)
	}
	code, out = run("vuln", "top", "-n", "3")
	if code != 0 || !strings.Contains(out, "CVE-2023-45853") {
		t.Fatalf("vuln top: exit %d\n%s", code, out)
	}
	code, out = run("vuln", "package", "libssl3", "--below", "3.0.13-1~deb12u1")
	if code != 0 || !strings.Contains(out, "3.0.11-1~deb12u2") {
		t.Fatalf("vuln package --below: exit %d\n%s", code, out)
	}
	if code, out = run("vuln", "hosts", "CVE-24"); code != cli.ExitError || !strings.Contains(out, "not a CVE") {
		t.Fatalf("bad CVE id: exit %d\n%s", code, out)
	}

	// SIGHUP imports the advisories again.
	before := s.Vuln().Stats().Advisories.At
	stop := reloadOnHUP(s, slog.New(slog.DiscardHandler))
	defer stop()
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil("the SIGHUP reload", func() bool {
		a := s.Vuln().Stats().Advisories
		return a.At.After(before) && a.Replaced == 7
	})
}
