package cli

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server"
	"github.com/vigil-hids/vigil/server/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestAgentsAndStopWithCells runs a real server with a second cell (an
// embedded etcd) and one registration in each: agents ls shows the CELL
// column and fleet stop reports each cell's write.
func TestAgentsAndStopWithCells(t *testing.T) {
	eb := etcdtest.StartEmbedded(t)
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
		CheckPlugin: catalog.Validate, CellName: "east", Cells: []server.CellConfig{{Name: "west", Endpoints: eb.Endpoints()}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	f := &fixture{srv: s, pki: pd}
	ks := api.NewKeyspace("")
	for host, cli := range map[string]*clientv3.Client{"h-east": s.Store().Client(), "h-west": eb.Client(t)} {
		reg, _ := json.Marshal(api.Registration{Host: host, Version: "test"})
		if _, err := cli.Put(ctx, ks.Agent(host), string(reg)); err != nil {
			t.Fatal(err)
		}
	}
	out := f.mustRun(t, "auditor", "", "agents", "ls")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "CELL") || !strings.HasPrefix(lines[1], "east  ") || !strings.HasPrefix(lines[2], "west  ") {
		t.Fatalf("agents ls with cells:\n%s", out)
	}
	if n := strings.TrimSpace(f.mustRun(t, "auditor", "", "agents", "count")); n != "2" {
		t.Fatalf("agents count = %q, want 2", n)
	}
	out = f.mustRun(t, "admin", "", "fleet", "stop")
	if !strings.Contains(out, "fleet: stop written in cell east as seq 1") || !strings.Contains(out, "fleet: stop written in cell west as seq 1") {
		t.Fatalf("fleet stop with cells:\n%s", out)
	}
}
