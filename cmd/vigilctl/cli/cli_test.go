package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server"
	"github.com/vigil-hids/vigil/server/pki"
	"github.com/vigil-hids/vigil/server/store"
)

// fixture is a real vigil-server (embedded etcd, mutual TLS) on loopback
// ports, and the certificates of every role.
type fixture struct {
	srv *server.Server
	pki string
}

func start(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	pd := filepath.Join(dir, "pki")
	if _, err := pki.Init(pd, pki.Options{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := server.Start(ctx, server.Config{
		ID: "test-replica", Listen: "127.0.0.1:0", DataDir: filepath.Join(dir, "data"),
		EtcdClientURL: "http://127.0.0.1:0", EtcdPeerURL: "http://127.0.0.1:0",
		TLS:         pki.Files{CA: filepath.Join(pd, "ca.crt"), Cert: filepath.Join(pd, "server.crt"), Key: filepath.Join(pd, "server.key")},
		CheckPlugin: catalog.Validate, AggregateInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	for deadline := time.Now().Add(30 * time.Second); !s.IsLeader(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the only replica was not elected")
		}
	}
	return &fixture{srv: s, pki: pd}
}

func compact(b []byte) string {
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return string(b)
	}
	return out.String()
}

// env returns the environment vigilctl sees when run by role.
func (f *fixture) env(role string) func(string) string {
	m := map[string]string{
		"VIGIL_SERVER": "https://" + f.srv.Addr(),
		"VIGIL_CA":     filepath.Join(f.pki, "ca.crt"),
		"VIGIL_CERT":   filepath.Join(f.pki, role+".crt"),
		"VIGIL_KEY":    filepath.Join(f.pki, role+".key"),
		"HOME":         "/nonexistent",
	}
	return func(k string) string { return m[k] }
}

type result struct {
	code     int
	out, err string
}

func (f *fixture) run(t *testing.T, role, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(args, Streams{In: strings.NewReader(stdin), Out: &out, Err: &errb}, f.env(role))
	return result{code: code, out: out.String(), err: errb.String()}
}

func (f *fixture) mustRun(t *testing.T, role, stdin string, args ...string) string {
	t.Helper()
	r := f.run(t, role, stdin, args...)
	if r.code != 0 {
		t.Fatalf("vigilctl %v: exit %d: %s", args, r.code, r.err)
	}
	return r.out
}

func TestConfigSetHistoryDiffRollback(t *testing.T) {
	f := start(t)
	f.mustRun(t, "admin", "plugins:\n  example:\n    enabled: true\n    config: {interval: 10s}\n", "config", "set", "--comment", "first")
	doc := filepath.Join(t.TempDir(), "doc.json")
	if err := os.WriteFile(doc, []byte(`{"plugins":{"example":{"enabled":true,"config":{"interval":"30s"}}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out := f.mustRun(t, "admin", "", "config", "set", "-f", doc, "--comment", "slower")
	if !strings.Contains(out, "fleet: wrote seq 2") {
		t.Fatalf("set output: %q", out)
	}
	out = f.mustRun(t, "auditor", "", "config", "history")
	if !strings.Contains(out, "slower") || !strings.Contains(out, "admin") || !strings.Contains(out, "first") {
		t.Fatalf("history: %q", out)
	}
	out = f.mustRun(t, "auditor", "", "config", "diff", "--from", "1")
	if !strings.Contains(out, `~ plugins.example.config.interval: "10s" -> "30s"`) {
		t.Fatalf("diff: %q", out)
	}
	f.mustRun(t, "admin", "", "config", "rollback", "--to", "1", "--comment", "back")
	var cur store.Current
	if err := json.Unmarshal([]byte(f.mustRun(t, "auditor", "", "config", "get", "-o", "json")), &cur); err != nil {
		t.Fatal(err)
	}
	if cur.Document.Seq != 3 || cur.Document.Comment != "rollback to seq 1: back" || compact(cur.Document.State.Plugins["example"].Config) != `{"interval":"10s"}` {
		t.Fatalf("after rollback: %+v", cur.Document)
	}
	var hist []api.Document
	if err := json.Unmarshal([]byte(f.mustRun(t, "auditor", "", "config", "history", "-o", "json")), &hist); err != nil {
		t.Fatal(err)
	}
	if len(hist) != 3 || hist[2].Comment != "first" || hist[1].Comment != "slower" {
		t.Fatalf("history is not append-only: %+v", hist)
	}
	// An operator may write a group scope; the author is its certificate's CN.
	f.mustRun(t, "operator", "log_level: debug\n", "config", "set", "--scope", "group:env=canary")
	if err := json.Unmarshal([]byte(f.mustRun(t, "auditor", "", "config", "get", "--scope", "group:env=canary", "-o", "json")), &cur); err != nil {
		t.Fatal(err)
	}
	if cur.Document.Author != "operator" {
		t.Fatalf("author = %q", cur.Document.Author)
	}
	register(t, f, "web-9", map[string]string{"env": "canary"}, 0)
	out = f.mustRun(t, "auditor", "", "config", "get", "--scope", "host:web-9", "--effective")
	if !strings.Contains(out, "#   fleet seq 3") || !strings.Contains(out, "#   group:env=canary seq 1") ||
		!strings.Contains(out, `"log_level": "debug"`) || !strings.Contains(out, `"interval": "10s"`) {
		t.Fatalf("effective: %q", out)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	f := start(t)
	f.mustRun(t, "admin", "log_level: info\n", "config", "set", "--comment", "good")
	big := `{"tasks":[{"id":"t","plugin":"example","name":"n","args":"` + strings.Repeat("x", 800<<10) + `"}]}`
	tests := []struct {
		name  string
		role  string
		doc   string
		args  []string
		wants []string
	}{
		{name: "invalid JSON", role: "admin", doc: `{"log_level": "info",}`, wants: []string{"JSON: line 1 column"}},
		{name: "invalid YAML", role: "admin", doc: "plugins:\n  example:\n   enabled: true\n  config: [\n", wants: []string{"YAML: yaml: line"}},
		{name: "unknown key", role: "admin", doc: "log_levle: info\n", wants: []string{`unknown key "log_levle"`}},
		{name: "unknown plugin", role: "admin", doc: "plugins: {nosuch: {enabled: true}}\n", wants: []string{`catalog: unknown plugin "nosuch"`}},
		{name: "out of range, plugin's own message", role: "admin", doc: "plugins: {example: {config: {interval: 100ms}}}\n",
			wants: []string{"example.interval must be between 1s and 1h"}},
		{name: "over etcd's request limit", role: "admin", doc: big, wants: []string{"over etcd's request limit"}},
		{name: "auditor may not write", role: "auditor", doc: "log_level: debug\n",
			wants: []string{`role "auditor"`, "/hids/server/config/_fleet/master"}},
		{name: "operator may not write fleet", role: "operator", doc: "log_level: debug\n",
			wants: []string{`role "operator"`, "/hids/server/config/_fleet/master", "written by admins"}},
		{name: "auditor may not roll back", role: "auditor", args: []string{"config", "rollback", "--to", "1"},
			wants: []string{`role "auditor"`, "may not write /hids/server/config/_fleet/master"}},
		{name: "auditor may not stop", role: "auditor", args: []string{"fleet", "stop"},
			wants: []string{`role "auditor"`, "may not stop or resume /hids/server/config/_fleet/master"}},
		{name: "bad scope", role: "admin", doc: "{}", args: []string{"config", "set", "--scope", "group:env"}, wants: []string{"want group:LABEL=VALUE"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if args == nil {
				args = []string{"config", "set"}
			}
			r := f.run(t, tt.role, tt.doc, args...)
			if r.code != ExitError {
				t.Fatalf("exit %d, want %d; stderr %q", r.code, ExitError, r.err)
			}
			for _, w := range tt.wants {
				if !strings.Contains(r.err, w) {
					t.Errorf("stderr %q does not contain %q", r.err, w)
				}
			}
			var hist []api.Document
			if err := json.Unmarshal([]byte(f.mustRun(t, "auditor", "", "config", "history", "-o", "json")), &hist); err != nil {
				t.Fatal(err)
			}
			if len(hist) != 1 || hist[0].Comment != "good" {
				t.Fatalf("history changed after a refused write: %+v", hist)
			}
		})
	}
}

func register(t *testing.T, f *fixture, name string, labels map[string]string, applied int64) {
	t.Helper()
	if err := putRegistration(f, name, labels, applied); err != nil {
		t.Fatal(err)
	}
}

// putRegistration writes a host's registration; safe from any goroutine.
func putRegistration(f *fixture, name string, labels map[string]string, applied int64) error {
	b, _ := json.Marshal(api.Registration{Host: name, Version: "1.0", Labels: labels, Applied: api.Applied{Revision: applied}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := f.srv.Store().Client().Put(ctx, f.srv.Store().Keyspace().Agent(name), string(b))
	return err
}

func TestAgentsAndFleetStopWait(t *testing.T) {
	f := start(t)
	for i := range 6 {
		env := "prod"
		if i < 2 {
			env = "canary"
		}
		register(t, f, fmt.Sprintf("web-%d", i), map[string]string{"env": env, "idc": "dc1"}, 0)
	}
	out := f.mustRun(t, "auditor", "", "agents", "ls", "--label", "env=canary")
	if !strings.Contains(out, "web-0") || !strings.Contains(out, "web-1") || strings.Contains(out, "web-2") {
		t.Fatalf("agents ls: %q", out)
	}
	out = f.mustRun(t, "auditor", "", "agents", "count", "--by", "env")
	if !strings.Contains(out, "canary  2") || !strings.Contains(out, "prod    4") || !strings.Contains(out, "total   6") {
		t.Fatalf("agents count: %q", out)
	}
	if out = f.mustRun(t, "auditor", "", "agents", "count"); strings.TrimSpace(out) != "6" {
		t.Fatalf("count = %q", out)
	}

	// Hosts acknowledge a stop by writing its revision into their
	// registration; here the test plays the hosts, all but web-5.
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for ctx.Err() == nil {
			cur, err := f.srv.Store().Get(ctx, api.Scope{Kind: api.ScopeFleet})
			if err == nil && cur.Revision > 0 {
				for i := range 5 {
					env := map[bool]string{true: "canary", false: "prod"}[i < 2]
					if err := putRegistration(f, fmt.Sprintf("web-%d", i), map[string]string{"env": env, "idc": "dc1"}, cur.Revision); err != nil {
						t.Error(err)
					}
				}
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	// The wait ends at its timeout (web-5 never acknowledges): long enough
	// for the five acknowledgements above on a loaded machine.
	r := f.run(t, "operator", "", "fleet", "stop", "--wait", "--timeout", "8s", "--comment", "incident")
	<-done
	if r.code != ExitNotAcknowledged || !strings.Contains(r.out, "5/6 hosts acknowledged") || !strings.Contains(r.out, "1 stragglers:\n  web-5") {
		t.Fatalf("stop --wait: exit %d\nstdout %q\nstderr %q", r.code, r.out, r.err)
	}
	cur, _ := f.srv.Store().Get(context.Background(), api.Scope{Kind: api.ScopeFleet})
	if cur.Document.State.Stop == nil || !*cur.Document.State.Stop || cur.Document.Author != "operator" {
		t.Fatalf("fleet document after stop: %+v", cur.Document)
	}
	register(t, f, "web-5", map[string]string{"env": "prod"}, cur.Revision)

	// Resume the canary group: only its two hosts are targeted.
	r = f.run(t, "operator", "", "fleet", "resume", "--scope", "group:env=canary", "--wait", "--timeout", "300ms", "-o", "json")
	var wr WaitResult
	if err := json.Unmarshal([]byte(r.out), &wr); err != nil {
		t.Fatalf("%v: %q", err, r.out)
	}
	if r.code != ExitNotAcknowledged || wr.Progress.Targeted != 2 || wr.Complete || len(wr.Progress.Stragglers) != 2 {
		t.Fatalf("resume --wait: exit %d %+v", r.code, wr)
	}
	for i := range 2 {
		register(t, f, fmt.Sprintf("web-%d", i), map[string]string{"env": "canary"}, wr.Revision)
	}
	r = f.run(t, "operator", "", "fleet", "resume", "--scope", "host:web-0", "--wait", "--timeout", "1s")
	if r.code != ExitNotAcknowledged { // web-0 acknowledged the group's resume, not this newer write
		t.Fatalf("host resume: exit %d %q", r.code, r.out)
	}
}

func TestServerStatusAndConfigFile(t *testing.T) {
	f := start(t)
	home := t.TempDir()
	cfgDir := filepath.Join(home, ".config", "vigil")
	if err := os.MkdirAll(cfgDir, 0o700); err != nil {
		t.Fatal(err)
	}
	env := f.env("auditor")
	file := fmt.Sprintf("server: %s\nca: %s\ncert: %s\nkey: %s\n", env("VIGIL_SERVER"), env("VIGIL_CA"), env("VIGIL_CERT"), env("VIGIL_KEY"))
	if err := os.WriteFile(filepath.Join(cfgDir, "vigilctl.yaml"), []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := Run([]string{"server", "status"}, Streams{In: strings.NewReader(""), Out: &out, Err: &errb},
		func(k string) string { return map[string]string{"HOME": home}[k] })
	if code != 0 || !strings.Contains(out.String(), "election leader:  test-replica") || !strings.Contains(out.String(), "etcd healthy:     true") {
		t.Fatalf("status with the config file: exit %d %q %q", code, out.String(), errb.String())
	}
	// A flag wins over the file: a wrong CA fails the handshake.
	code = Run([]string{"server", "status", "--ca", filepath.Join(f.pki, "admin.crt")}, Streams{In: strings.NewReader(""), Out: &out, Err: &errb},
		func(k string) string { return map[string]string{"HOME": home}[k] })
	if code != ExitError || !strings.Contains(errb.String(), "certificate") {
		t.Fatalf("wrong CA: exit %d %q", code, errb.String())
	}
	// Unknown keys in the config file are errors.
	if err := os.WriteFile(filepath.Join(cfgDir, "vigilctl.yaml"), []byte("sever: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	errb.Reset()
	code = Run([]string{"server", "status"}, Streams{In: strings.NewReader(""), Out: &out, Err: &errb},
		func(k string) string { return map[string]string{"HOME": home}[k] })
	if code != ExitError || !strings.Contains(errb.String(), "field sever not found") {
		t.Fatalf("bad config file: exit %d %q", code, errb.String())
	}
	// The host certificate may not use the operator API.
	if r := f.run(t, "host", "", "agents", "ls"); r.code != ExitError || !strings.Contains(r.err, `role "host"`) {
		t.Fatalf("host cert: %+v", r)
	}
}

// TestBinary builds vigilctl and runs the real executable against the
// server.
func TestBinary(t *testing.T) {
	f := start(t)
	bin := filepath.Join(t.TempDir(), "vigilctl")
	if out, err := exec.Command("go", "build", "-o", bin, "..").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	env := f.env("admin")
	runBin := func(stdin string, args ...string) (string, int) {
		cmd := exec.Command(bin, args...)
		cmd.Env = []string{"VIGIL_SERVER=" + env("VIGIL_SERVER"), "VIGIL_CA=" + env("VIGIL_CA"),
			"VIGIL_CERT=" + env("VIGIL_CERT"), "VIGIL_KEY=" + env("VIGIL_KEY"), "HOME=" + t.TempDir()}
		cmd.Stdin = strings.NewReader(stdin)
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}
	if out, code := runBin("stop: false\n", "config", "set", "--scope", "host:web-1", "-o", "json"); code != 0 || !strings.Contains(out, `"seq": 1`) {
		t.Fatalf("set: %d %s", code, out)
	}
	if out, code := runBin("", "server", "status", "-o", "json"); code != 0 || !strings.Contains(out, `"election_leader": "test-replica"`) {
		t.Fatalf("status: %d %s", code, out)
	}
	register(t, f, "web-1", nil, 0)
	if out, code := runBin("", "fleet", "stop", "--scope", "host:web-1", "--wait", "--timeout", "300ms"); code != ExitNotAcknowledged || !strings.Contains(out, "web-1") {
		t.Fatalf("stop --wait: %d %s", code, out)
	}
}
