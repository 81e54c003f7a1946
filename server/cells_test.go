package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/control"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server/cells"
	"github.com/vigil-hids/vigil/server/client"
)

// cellHost is a host's applier: it remembers the last state applied.
type cellHost struct {
	mu       sync.Mutex
	stopped  bool
	logLevel string
}

func (h *cellHost) Apply(_ context.Context, _ int64, ds api.DesiredState) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped, h.logLevel = ds.Stop != nil && *ds.Stop, ds.LogLevel
	return nil
}

func (h *cellHost) Status() map[string]api.PluginStatus { return nil }

func (h *cellHost) state() (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stopped, h.logLevel
}

// TestServerWithTwoCells runs a real vigil-server with its embedded etcd
// (cell "a") and a second embedded etcd as cell "b", with real host control
// loops registered in each, and drives it through the HTTP API: a fleet
// stop reaches the hosts of both cells and its progress counts them all,
// agents ls and count merge both cells with each host's cell, a fleet
// config write lands in both cells and a host's config in its own cell only.
func TestServerWithTwoCells(t *testing.T) {
	eb := etcdtest.StartEmbedded(t)
	ports, err := etcdtest.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx, Config{ID: "r1", Listen: "127.0.0.1:0", DataDir: t.TempDir(), Insecure: true,
		EtcdClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), EtcdPeerURL: fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		CellName: "a", Cells: []CellConfig{{Name: "b", Endpoints: eb.Endpoints()}},
		CheckPlugin: catalog.Validate, AggregateInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	hosts := map[string]*cellHost{}
	cellOf := map[string]string{"a0": "a", "a1": "a", "b0": "b", "b1": "b", "b2": "b"}
	for name, cell := range cellOf {
		eps := []string{s.embed.Endpoint()}
		if cell == "b" {
			eps = eb.Endpoints()
		}
		h := &cellHost{}
		l, err := control.Start(context.Background(), control.Config{Endpoints: eps, Host: name, Labels: map[string]string{"cell": cell},
			LeaseTTL: 5 * time.Second, Version: "test"}, h, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("host %s: %v", name, err)
		}
		t.Cleanup(l.Close)
		hosts[name] = h
	}
	cl, err := client.New(client.Config{Server: "http://" + s.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	waitFor(t, "5 hosts in the merged count", func() bool {
		n, err := cl.Count(ctx, nil, "")
		return err == nil && n.Total == 5
	})
	var count cells.Count
	getJSON(t, "http://"+s.Addr()+"/v1/agents/count?by=cell", &count)
	if count.Total != 5 || count.Groups["a"] != 2 || count.Groups["b"] != 3 || count.Cells["a"].Total != 2 || count.Cells["b"].Total != 3 {
		t.Fatalf("merged count by cell label = %+v", count)
	}
	as, err := cl.AgentsCells(ctx, nil, 0)
	if err != nil || len(as) != 5 {
		t.Fatalf("agents = %+v, %v", as, err)
	}
	for _, a := range as {
		if a.Cell != cellOf[a.Name] {
			t.Errorf("agent %s tagged with cell %q, want %q", a.Name, a.Cell, cellOf[a.Name])
		}
	}

	fleet := api.Scope{Kind: api.ScopeFleet}
	res, err := cl.StopCells(ctx, fleet, true, "two cells")
	if err != nil || len(res.Cells) != 2 || res.Cells[0].Cell != "a" || res.Cells[1].Cell != "b" || res.Revision != res.Cells[0].Result.Revision {
		t.Fatalf("fleet stop = %+v, %v", res, err)
	}
	waitFor(t, "every host of both cells acknowledges the stop", func() bool {
		p, err := cl.ProgressCells(ctx, fleet, res)
		return err == nil && p.Targeted == 5 && p.Done() && p.Cells["a"].Acknowledged == 2 && p.Cells["b"].Acknowledged == 3
	})
	for name, h := range hosts {
		if stopped, _ := h.state(); !stopped {
			t.Errorf("host %s acknowledged but is not stopped", name)
		}
	}
	// Progress of a fleet scope without every cell's revision is refused.
	if _, err := cl.Progress(ctx, fleet, res.Revision); err == nil || !strings.Contains(err.Error(), "cell_revision") {
		t.Errorf("progress with one revision: %v, want an error asking for cell_revision", err)
	}

	host := api.Scope{Kind: api.ScopeHost, Host: "b1"}
	hr, err := cl.Set(ctx, host, []byte(`{"log_level": "debug"}`), "b1 only", nil)
	if err != nil {
		t.Fatal(err)
	}
	stB, _ := s.cells.Store("b")
	if cur, err := stB.Get(ctx, host); err != nil || cur.Document.State.LogLevel != "debug" || cur.Revision != hr.Revision {
		t.Fatalf("host scope in cell b = %+v, %v (write %+v)", cur, err, hr)
	}
	if cur, err := s.Store().Get(ctx, host); err != nil || cur.Revision != 0 {
		t.Fatalf("host scope of b1 written to the default cell too: %+v, %v", cur, err)
	}
	waitFor(t, "b1 applies its host config", func() bool { _, l := hosts["b1"].state(); return l == "debug" })
	if _, err := cl.Set(ctx, fleet, []byte(`{"log_level": "warning"}`), "", new(int64)); err == nil {
		t.Error("a fleet write with if_revision across cells was accepted")
	}
	if _, err := cl.Set(ctx, fleet, []byte(`{"log_level": "warning"}`), "both cells", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "hosts of both cells apply the fleet config", func() bool {
		_, la := hosts["a0"].state()
		_, lb := hosts["b0"].state()
		return la == "warning" && lb == "warning"
	})
}

func getJSON(t *testing.T, url string, out any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatal(err)
	}
}

// TestCellsRefuseTheSameCluster starts a server whose extra cell is its
// default cell's etcd again: every host would count twice, so Start fails
// and names both cells.
func TestCellsRefuseTheSameCluster(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, Config{ID: "r1", Listen: "127.0.0.1:0", EtcdEndpoints: e.Endpoints(), Insecure: true,
		Cells: []CellConfig{{Name: "again", Endpoints: e.Endpoints()}}, CheckPlugin: catalog.Validate})
	if err == nil {
		s.Close()
		t.Fatal("a cell that is the default cell's cluster was accepted")
	}
	if !strings.Contains(err.Error(), "default and again are the same etcd cluster") {
		t.Fatalf("error %q does not name both cells", err)
	}
}
