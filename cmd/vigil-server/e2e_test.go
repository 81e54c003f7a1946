package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/cmd/vigilctl/cli"
	"github.com/vigil-hids/vigil/host/control"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server"
	"github.com/vigil-hids/vigil/server/pki"
)

// recorder is an Applier that remembers the last desired state.
type recorder struct {
	mu      sync.Mutex
	stopped bool
	at      time.Time // when the last Apply happened
}

func (r *recorder) Apply(_ context.Context, _ int64, ds api.DesiredState) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = ds.Stop != nil && *ds.Stop
	r.at = time.Now()
	return nil
}

func (r *recorder) Status() map[string]api.PluginStatus { return nil }

func (r *recorder) isStopped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopped
}

// TestFleetStopEndToEnd is the whole control plane on loopback: `init`
// (dev PKI, etcd RBAC), vigil-server with its embedded etcd, real host
// control loops authenticating to etcd as vigil-host, and vigilctl's
// `fleet stop --wait` and `resume --wait` as an operator, which exit 0 once
// every host acknowledged.
func TestFleetStopEndToEnd(t *testing.T) {
	d := runInit(t)
	pd, data, curl, purl := d.pki, d.data, d.clientURL, d.peerURL
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := server.Start(ctx, server.Config{ID: "r1", Listen: "127.0.0.1:0", DataDir: data, EtcdClientURL: curl, EtcdPeerURL: purl,
		TLS:         pki.Files{CA: filepath.Join(pd, "ca.crt"), Cert: filepath.Join(pd, "server.crt"), Key: filepath.Join(pd, "server.key")},
		CheckPlugin: catalog.Validate})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	const hosts = 20
	recs := make([]*recorder, hosts)
	for i := range hosts {
		recs[i] = &recorder{}
		env := "prod"
		if i%4 == 0 {
			env = "canary"
		}
		l, err := control.Start(ctx, control.Config{
			Endpoints: []string{strings.Replace(curl, "http:", "https:", 1)},
			CAFile:    filepath.Join(pd, "ca.crt"), CertFile: filepath.Join(pd, "host.crt"), KeyFile: filepath.Join(pd, "host.key"),
			Host: fmt.Sprintf("web-%02d", i), Labels: map[string]string{"env": env}, Version: "test",
			LeaseTTL: 5 * time.Second, StateDir: filepath.Join(t.TempDir(), "host", fmt.Sprint(i)),
			BackoffInitial: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond, StatusInterval: 200 * time.Millisecond,
		}, recs[i], nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
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
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if code, out := run("agents", "count"); code == 0 && strings.TrimSpace(out) == fmt.Sprint(hosts) {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("hosts did not register: %d %s", code, out)
		}
	}
	code, out := run("fleet", "stop", "--wait", "--timeout", "30s", "--comment", "e2e")
	if code != cli.ExitOK || !strings.Contains(out, fmt.Sprintf("%d/%d hosts acknowledged", hosts, hosts)) {
		t.Fatalf("fleet stop --wait: exit %d\n%s", code, out)
	}
	for i, r := range recs {
		if !r.isStopped() {
			t.Errorf("host %d acknowledged but was not stopped", i)
		}
	}
	code, out = run("fleet", "resume", "--scope", "group:env=canary", "--wait", "--timeout", "30s")
	if code != cli.ExitOK || !strings.Contains(out, "5/5 hosts acknowledged") {
		t.Fatalf("resume canary --wait: exit %d\n%s", code, out)
	}
	// The group resume only cleared the group's own flag: the fleet stop
	// still applies to every host.
	for i, r := range recs {
		if !r.isStopped() {
			t.Errorf("host %d resumed although the fleet is stopped", i)
		}
	}
	code, out = run("fleet", "resume", "--wait", "--timeout", "30s")
	if code != cli.ExitOK || !strings.Contains(out, fmt.Sprintf("%d/%d hosts acknowledged", hosts, hosts)) {
		t.Fatalf("fleet resume --wait: exit %d\n%s", code, out)
	}
	for i, r := range recs {
		if r.isStopped() {
			t.Errorf("host %d still stopped after resume", i)
		}
	}
}
