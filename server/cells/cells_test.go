package cells

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/control"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/server/store"
)

// recorder is a host's applier: it remembers the last state applied.
type recorder struct {
	mu      sync.Mutex
	stopped bool
	cfg     string
}

func (r *recorder) Apply(_ context.Context, _ int64, ds api.DesiredState) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = ds.Stop != nil && *ds.Stop
	r.cfg = ""
	if p, ok := ds.Plugins["procmon"]; ok {
		r.cfg = string(p.Config)
	}
	return nil
}

func (r *recorder) Status() map[string]api.PluginStatus { return nil }

func (r *recorder) state() (bool, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopped, r.cfg
}

func acceptProcmon(plugin string, _ json.RawMessage) error {
	if plugin != "procmon" {
		return fmt.Errorf("unknown plugin %q", plugin)
	}
	return nil
}

func tctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// startHost runs the real host control loop against one cell.
func startHost(t *testing.T, eps []string, name string, labels map[string]string) *recorder {
	t.Helper()
	r := &recorder{}
	l, err := control.Start(context.Background(), control.Config{Endpoints: eps, Host: name, Labels: labels, LeaseTTL: 5 * time.Second, Version: "test"}, r, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("host %s: %v", name, err)
	}
	t.Cleanup(l.Close)
	return r
}

// eventually polls cond until it holds; the deadline is only a failure
// bound.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached after 60s: %s", what, detail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTwoCells runs two real etcd clusters (two embedded etcds) with real
// host control loops in each, and checks that a fleet-wide stop reaches
// every host of both cells, that counts and lists are merged with each
// host's cell, that a host's change goes to its cell only, and that a cell
// that is down is named while the other still gets the command.
func TestTwoCells(t *testing.T) {
	ea, eb := etcdtest.StartEmbedded(t), etcdtest.StartEmbedded(t)
	sa := store.New(ea.Client(t), store.Options{Validate: acceptProcmon})
	sb := store.New(eb.Client(t), store.Options{Validate: acceptProcmon})
	set, err := New([]Cell{{Name: "idc-a", Store: sa}, {Name: "idc-b", Store: sb}})
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Check(tctx(t)); err != nil {
		t.Fatalf("Check of two distinct clusters: %v", err)
	}
	hosts := map[string]*recorder{}
	cellOf := map[string]string{}
	for i := range 3 {
		n := fmt.Sprintf("a%d", i)
		hosts[n], cellOf[n] = startHost(t, ea.Endpoints(), n, map[string]string{"env": []string{"prod", "dev"}[i%2]}), "idc-a"
	}
	for i := range 2 {
		n := fmt.Sprintf("b%d", i)
		hosts[n], cellOf[n] = startHost(t, eb.Endpoints(), n, map[string]string{"env": "prod"}), "idc-b"
	}
	eventually(t, "5 hosts registered", func() (bool, string) {
		c, err := set.Count(tctx(t), nil, "")
		return err == nil && c.Total == 5, fmt.Sprintf("%+v %v", c, err)
	})
	c, err := set.Count(tctx(t), nil, "env")
	if err != nil || c.Total != 5 || c.Groups["prod"] != 4 || c.Groups["dev"] != 1 || c.Cells["idc-a"].Total != 3 || c.Cells["idc-b"].Total != 2 {
		t.Fatalf("Count by env = %+v, %v", c, err)
	}
	as, err := set.Agents(tctx(t), store.Selector{"env": "prod"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range as {
		got = append(got, a.Cell+"/"+a.Name)
	}
	if strings.Join(got, ",") != "idc-a/a0,idc-a/a2,idc-b/b0,idc-b/b1" {
		t.Fatalf("Agents env=prod = %v", got)
	}
	if as, _ := set.Agents(tctx(t), nil, 2); len(as) != 2 || as[0].Name != "a0" || as[1].Name != "a1" {
		t.Fatalf("Agents limit 2 = %+v", as)
	}
	for h, want := range cellOf {
		cell, reg, err := set.Locate(tctx(t), h)
		if err != nil || cell != want || reg.Host != h {
			t.Fatalf("Locate(%s) = %s, %+v, %v; want %s", h, cell, reg, err, want)
		}
	}
	if _, _, err := set.Locate(tctx(t), "nowhere"); !errors.Is(err, ErrHostNotFound) {
		t.Fatalf("Locate(nowhere) = %v, want ErrHostNotFound", err)
	}

	// Fleet-wide emergency stop: one write per cell, every host stops.
	fleet := api.Scope{Kind: api.ScopeFleet}
	res, err := set.SetStop(tctx(t), fleet, true, "alice", "incident 7")
	if err != nil || len(res) != 2 || res[0].Cell != "idc-a" || res[1].Cell != "idc-b" || res[0].Result.Revision == 0 || res[1].Result.Revision == 0 {
		t.Fatalf("SetStop fleet = %+v, %v", res, err)
	}
	eventually(t, "every host of both cells acknowledged the stop", func() (bool, string) {
		p, err := set.Progress(tctx(t), fleet, res)
		return err == nil && p.Done() && p.Targeted == 5, fmt.Sprintf("%+v %v", p, err)
	})
	for h, r := range hosts {
		if stopped, _ := r.state(); !stopped {
			t.Errorf("host %s acknowledged but its applier is not stopped", h)
		}
	}

	// A host's change goes to its cell only.
	hs := api.Scope{Kind: api.ScopeHost, Host: "b1"}
	hres, err := set.Set(tctx(t), store.Write{Scope: hs, Author: "alice",
		State: api.DesiredState{Plugins: map[string]api.PluginState{"procmon": {Config: json.RawMessage(`{"q":1}`)}}}})
	if err != nil || len(hres) != 1 || hres[0].Cell != "idc-b" {
		t.Fatalf("Set host b1 = %+v, %v", hres, err)
	}
	if cur, err := sa.Get(tctx(t), hs); err != nil || cur.Revision != 0 {
		t.Fatalf("cell idc-a has host b1's document: %+v, %v", cur, err)
	}
	eventually(t, "b1 applied its config", func() (bool, string) {
		_, cfg := hosts["b1"].state()
		return cfg == `{"q":1}`, cfg
	})
	if _, err := set.Set(tctx(t), store.Write{Scope: api.Scope{Kind: api.ScopeHost, Host: "ghost"}, Author: "alice"}); !errors.Is(err, ErrHostNotFound) {
		t.Fatalf("Set for an unregistered host = %v, want ErrHostNotFound", err)
	}

	// One cell down: the other still gets the resume, the error names the
	// dead cell.
	ea.Close()
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err = set.SetStop(dctx, fleet, false, "alice", "resolved")
	if err == nil || !strings.Contains(err.Error(), "cell idc-a") || strings.Contains(err.Error(), "cell idc-b") {
		t.Fatalf("SetStop with idc-a down: err = %v, want one naming idc-a only", err)
	}
	if res[1].Error != "" || res[1].Result.Revision == 0 || res[0].Error == "" {
		t.Fatalf("SetStop with idc-a down = %+v", res)
	}
	for _, h := range []string{"b0", "b1"} {
		eventually(t, h+" resumed", func() (bool, string) {
			stopped, _ := hosts[h].state()
			return !stopped, "still stopped"
		})
	}
}

func TestSameClusterTwiceRefused(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	s1 := store.New(e.Client(t), store.Options{})
	s2 := store.New(e.Client(t), store.Options{})
	set, err := New([]Cell{{Name: "x", Store: s1}, {Name: "y", Store: s2}})
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Check(tctx(t)); err == nil || !strings.Contains(err.Error(), "x and y are the same etcd cluster") {
		t.Fatalf("Check = %v, want the same-cluster error", err)
	}
}

func TestNewRejectsBadCells(t *testing.T) {
	s := store.New(nil, store.Options{})
	for _, tc := range []struct {
		cells []Cell
		want  string
	}{
		{nil, "at least one cell"},
		{[]Cell{{Name: "a b", Store: s}}, `name "a b"`},
		{[]Cell{{Name: "a", Store: s}, {Name: "a", Store: s}}, `"a" appears twice`},
		{[]Cell{{Name: "a"}}, `cell "a" has no store`},
	} {
		if _, err := New(tc.cells); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%v) = %v, want %q", tc.cells, err, tc.want)
		}
	}
}
