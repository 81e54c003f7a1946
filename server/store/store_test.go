package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/server/desired"
	"github.com/vigil-hids/vigil/server/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreCurrent()) }

type procmonConfig struct {
	QueueSize int `json:"queue_size" vigil:"min=1024,max=1048576"`
}

func (c *procmonConfig) Validate() error { return nil }

// validate stands in for plugins/catalog.Validate with one plugin whose
// rules come from sdk tags, as a real plugin's do.
func validate(plugin string, raw json.RawMessage) error {
	if plugin != "procmon" {
		return fmt.Errorf("unknown plugin %q", plugin)
	}
	return sdk.DecodeConfig(plugin, raw, &procmonConfig{QueueSize: 4096})
}

func newStore(t *testing.T, cli *clientv3.Client) *Store {
	return New(cli, Options{Validate: validate, Now: func() time.Time { return time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC) }})
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func mustParse(t *testing.T, s string) api.DesiredState {
	t.Helper()
	st, err := desired.Parse([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func historyLen(t *testing.T, s *Store, scope api.Scope) int {
	t.Helper()
	h, err := s.History(ctx(t), scope, 0)
	if err != nil {
		t.Fatal(err)
	}
	return len(h)
}

func TestSetHistoryRollbackAndCompaction(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	s := newStore(t, cli)
	fleet := api.Scope{Kind: api.ScopeFleet}
	for i, doc := range []string{"plugins: {procmon: {config: {queue_size: 2048}}}", "plugins: {procmon: {config: {queue_size: 8192}}}", "log_level: debug"} {
		res, err := s.Set(ctx(t), Write{Scope: fleet, State: mustParse(t, doc), Author: "alice", Comment: fmt.Sprint("change ", i+1)})
		if err != nil {
			t.Fatalf("write %d: %v", i+1, err)
		}
		if res.Seq != int64(i+1) {
			t.Fatalf("seq = %d, want %d", res.Seq, i+1)
		}
	}
	etcdtest.Compact(t, cli)
	h, err := s.History(ctx(t), fleet, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 3 || h[0].Seq != 3 || h[2].Seq != 1 || h[2].Author != "alice" || h[2].Comment != "change 1" {
		t.Fatalf("history after compaction = %+v", h)
	}
	diff, err := s.Diff(ctx(t), fleet, 1, 2)
	if err != nil || len(diff) != 1 || diff[0].Path != "plugins.procmon.config.queue_size" {
		t.Fatalf("diff 1..2 = %+v, %v", diff, err)
	}
	res, err := s.Rollback(ctx(t), fleet, 1, "bob", "too big")
	if err != nil {
		t.Fatal(err)
	}
	cur, err := s.Get(ctx(t), fleet)
	if err != nil {
		t.Fatal(err)
	}
	if res.Seq != 4 || cur.Document.Seq != 4 || cur.Document.Author != "bob" || cur.Document.Comment != "rollback to seq 1: too big" ||
		string(cur.Document.State.Plugins["procmon"].Config) != `{"queue_size":2048}` {
		t.Fatalf("after rollback: %+v", cur.Document)
	}
	if d, _ := s.Diff(ctx(t), fleet, 1, 0); len(d) != 0 {
		t.Fatalf("current differs from seq 1: %+v", d)
	}
	old, err := s.At(ctx(t), fleet, 2)
	if err != nil || old.Author != "alice" || old.Seq != 2 {
		t.Fatalf("record 2 changed: %+v %v", old, err)
	}
	if _, err := s.Rollback(ctx(t), fleet, 99, "bob", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rollback to a missing seq = %v", err)
	}
}

func TestBadWritesLeaveNothing(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	s := newStore(t, e.Client(t))
	host := api.Scope{Kind: api.ScopeHost, Host: "web-1"}
	if _, err := s.Set(ctx(t), Write{Scope: host, State: mustParse(t, "log_level: info"), Author: "alice"}); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", desired.DefaultMaxRequestBytes/2)
	tests := []struct {
		name string
		doc  string
		want error
		msg  string
	}{
		{name: "unknown plugin", doc: `{"plugins":{"nosuch":{}}}`, want: desired.ErrInvalid, msg: `unknown plugin "nosuch"`},
		{name: "out of range", doc: `{"plugins":{"procmon":{"config":{"queue_size":12}}}}`, want: desired.ErrInvalid,
			msg: "procmon.queue_size must be between 1024 and 1048576 (got 12)"},
		{name: "bad log level", doc: `{"log_level":"loud"}`, want: desired.ErrInvalid, msg: "log_level must be one of"},
		{name: "over the request limit", doc: `{"tasks":[{"id":"t","plugin":"procmon","name":"n","args":"` + big + `"}]}`,
			want: desired.ErrTooLarge, msg: "over etcd's request limit of 1572864 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Set(ctx(t), Write{Scope: host, State: mustParse(t, tt.doc), Author: "alice"})
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Set = %v, want %v containing %q", err, tt.want, tt.msg)
			}
			cur, err := s.Get(ctx(t), host)
			if err != nil || cur.Document.Seq != 1 || cur.Document.State.LogLevel != "info" || historyLen(t, s, host) != 1 {
				t.Fatalf("document changed after a refused write: %+v %v", cur.Document, err)
			}
		})
	}
}

func TestConcurrentWritersConflict(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	s := newStore(t, e.Client(t))
	g := api.Scope{Kind: api.ScopeGroup, Label: "env", Value: "prod"}
	cur, err := s.Get(ctx(t), g)
	if err != nil {
		t.Fatal(err)
	}
	const writers = 8
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Set(ctx(t), Write{Scope: g, State: api.DesiredState{LogLevel: "info"}, Author: fmt.Sprint("w", i), IfRevision: &cur.Revision})
		}()
	}
	wg.Wait()
	var ok, conflicts int
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrConflict) && strings.Contains(err.Error(), "retry"):
			conflicts++
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if ok != 1 || conflicts != writers-1 || historyLen(t, s, g) != 1 {
		t.Fatalf("ok=%d conflicts=%d history=%d, want 1, %d, 1", ok, conflicts, historyLen(t, s, g), writers-1)
	}
}

// TestWriteGuards: a write whose guard no longer holds (the release it
// names was removed after it was read) is ErrConflict and writes nothing;
// with the guard holding it lands.
func TestWriteGuards(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	s := newStore(t, cli)
	key := api.NewKeyspace("").Release("procmon", "1.2.0", "linux", "amd64")
	put, err := cli.Put(ctx(t), key, "manifest")
	if err != nil {
		t.Fatal(err)
	}
	guard := clientv3.Compare(clientv3.ModRevision(key), "=", put.Header.Revision)
	fleet := api.Scope{Kind: api.ScopeFleet}
	if _, err := cli.Delete(ctx(t), key); err != nil {
		t.Fatal(err)
	}
	_, err = s.Set(ctx(t), Write{Scope: fleet, State: api.DesiredState{LogLevel: "info"}, Author: "alice", Guards: []clientv3.Cmp{guard}})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "depends on changed while writing") {
		t.Fatalf("Set with a broken guard = %v", err)
	}
	if cur, err := s.Get(ctx(t), fleet); err != nil || cur.Revision != 0 || historyLen(t, s, fleet) != 0 {
		t.Fatalf("a write with a broken guard left %+v (%v)", cur, err)
	}
	put, err = cli.Put(ctx(t), key, "manifest")
	if err != nil {
		t.Fatal(err)
	}
	guard = clientv3.Compare(clientv3.ModRevision(key), "=", put.Header.Revision)
	if _, err := s.Set(ctx(t), Write{Scope: fleet, State: api.DesiredState{LogLevel: "info"}, Author: "alice", Guards: []clientv3.Cmp{guard}}); err != nil {
		t.Fatalf("Set with a holding guard = %v", err)
	}
}

// register writes a fake registration, as the host loop would.
func register(t *testing.T, cli *clientv3.Client, name string, labels map[string]string, applied int64) {
	t.Helper()
	b, _ := json.Marshal(api.Registration{Host: name, Labels: labels, Applied: api.Applied{Revision: applied}})
	if _, err := cli.Put(ctx(t), api.NewKeyspace("").Agent(name), string(b)); err != nil {
		t.Fatal(err)
	}
}

func TestStopProgressAndCounts(t *testing.T) {
	for _, indexed := range []bool{false, true} {
		t.Run(map[bool]string{false: "range reads", true: "registry index"}[indexed], func(t *testing.T) {
			testStopProgressAndCounts(t, indexed)
		})
	}
}

func testStopProgressAndCounts(t *testing.T, indexed bool) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	opts := Options{Validate: validate, PageSize: 7} // several pages
	if indexed {
		x := registry.Start(cli, api.NewKeyspace(""), nil)
		t.Cleanup(x.Close)
		opts.Index = x
	}
	s := New(cli, opts)
	for i := range 20 {
		env := "prod"
		if i%4 == 0 {
			env = "canary"
		}
		register(t, cli, fmt.Sprintf("h%02d", i), map[string]string{"env": env, "idc": fmt.Sprint("dc", i%2)}, 0)
	}
	c, err := s.Count(ctx(t), nil, "")
	if err != nil || c.Total != 20 {
		t.Fatalf("count = %+v %v", c, err)
	}
	c, err = s.Count(ctx(t), Selector{"idc": "dc0"}, "env")
	if err != nil || c.Total != 10 || c.Groups["canary"] != 5 || c.Groups["prod"] != 5 {
		t.Fatalf("count idc=dc0 by env = %+v %v", c, err)
	}
	canary := api.Scope{Kind: api.ScopeGroup, Label: "env", Value: "canary"}
	res, err := s.SetStop(ctx(t), canary, true, "alice", "incident 42")
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Progress(ctx(t), canary, res.Revision)
	if err != nil || p.Targeted != 5 || p.Acknowledged != 0 || p.Done() {
		t.Fatalf("progress = %+v %v", p, err)
	}
	for _, h := range []string{"h00", "h04", "h08"} {
		register(t, cli, h, map[string]string{"env": "canary"}, res.Revision)
	}
	p, err = s.Progress(ctx(t), canary, res.Revision)
	if err != nil || p.Targeted != 5 || p.Acknowledged != 3 || strings.Join(p.Stragglers, ",") != "h12,h16" || p.StragglerCount != 2 {
		t.Fatalf("progress = %+v %v", p, err)
	}
	fleet := api.Scope{Kind: api.ScopeFleet}
	res2, err := s.SetStop(ctx(t), fleet, true, "alice", "")
	if err != nil {
		t.Fatal(err)
	}
	p, _ = s.Progress(ctx(t), fleet, res2.Revision)
	if p.Targeted != 20 || p.Acknowledged != 0 || len(p.Stragglers) != 20 {
		t.Fatalf("fleet progress = %+v", p)
	}
	hp, _ := s.Progress(ctx(t), api.Scope{Kind: api.ScopeHost, Host: "h04"}, res.Revision)
	if hp.Targeted != 1 || hp.Acknowledged != 1 {
		t.Fatalf("host progress = %+v", hp)
	}
	if _, err := s.SetStop(ctx(t), fleet, false, "alice", "resolved"); err != nil {
		t.Fatal(err)
	}
	cur, _ := s.Get(ctx(t), fleet)
	if cur.Document.State.Stop != nil || cur.Document.Seq != 2 || cur.Document.Comment != "resolved" {
		t.Fatalf("after resume: %+v", cur.Document)
	}
	as, err := s.Agents(ctx(t), Selector{"env": "canary"}, 0)
	if err != nil || len(as) != 5 || as[0].Name != "h00" || as[0].Mismatch != "" {
		t.Fatalf("agents = %+v %v", as, err)
	}
}

func TestAgentMismatchFlagged(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	s := newStore(t, cli)
	b, _ := json.Marshal(api.Registration{Host: "victim"})
	if _, err := cli.Put(ctx(t), s.Keyspace().Agent("liar"), string(b)); err != nil {
		t.Fatal(err)
	}
	as, err := s.Agents(ctx(t), nil, 0)
	if err != nil || len(as) != 1 || as[0].Mismatch != `value names host "victim"` {
		t.Fatalf("agents = %+v %v", as, err)
	}
}

// TestWritesSurviveLeaderKill writes through a three-member cluster of
// Debian's etcd, kills the leader, and checks that every acknowledged
// write and its history is still there and that writing continues.
func TestWritesSurviveLeaderKill(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	cli := c.Client(t)
	s := newStore(t, cli)
	fleet := api.Scope{Kind: api.ScopeFleet}
	if _, err := s.SetStop(ctx(t), fleet, true, "alice", "before"); err != nil {
		t.Fatal(err)
	}
	old := c.Leader(t)
	c.Kill(t, old)
	c.WaitLeader(t, old)
	var res Result
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		if res, err = s.SetStop(ctx(t), fleet, false, "alice", "after"); err == nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("writing after the leader was killed: %v", err)
	}
	h, err := s.History(ctx(t), fleet, 0)
	if err != nil || len(h) != 2 || h[1].Comment != "before" || h[0].Comment != "after" || res.Seq != 2 {
		t.Fatalf("history = %+v %v", h, err)
	}
	c.Restart(t, old)
	cur, err := s.Get(ctx(t), fleet)
	if err != nil || cur.Document.Seq != 2 {
		t.Fatalf("after restart: %+v %v", cur, err)
	}
}

func TestEffective(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	s := newStore(t, cli)
	set := func(sc api.Scope, doc string) {
		if _, err := s.Set(ctx(t), Write{Scope: sc, State: mustParse(t, doc), Author: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	set(api.Scope{Kind: api.ScopeFleet}, "log_level: info\nplugins: {procmon: {enabled: true, config: {queue_size: 2048}}}")
	set(api.Scope{Kind: api.ScopeGroup, Label: "env", Value: "canary"}, "plugins: {procmon: {config: {queue_size: 8192}}}")
	set(api.Scope{Kind: api.ScopeGroup, Label: "env", Value: "prod"}, "log_level: warning")
	set(api.Scope{Kind: api.ScopeHost, Host: "web-1"}, "log_level: debug")
	register(t, cli, "web-1", map[string]string{"env": "canary"}, 3)
	eff, err := s.Effective(ctx(t), "web-1")
	if err != nil {
		t.Fatal(err)
	}
	if !eff.Registered || eff.Applied != 3 || len(eff.Layers) != 3 || eff.Layers[1].Scope != "group:env=canary" ||
		eff.State.LogLevel != "debug" || string(eff.State.Plugins["procmon"].Config) != `{"queue_size":8192}` || eff.Revision != eff.Layers[2].Revision {
		t.Fatalf("effective = %+v", eff)
	}
	eff, err = s.Effective(ctx(t), "unregistered")
	if err != nil || eff.Registered || len(eff.Layers) != 1 || eff.State.LogLevel != "info" {
		t.Fatalf("unregistered = %+v %v", eff, err)
	}
}

// An index that stopped following the cell (its watch cut off) does not
// answer progress: the registrations are read from etcd.
func TestProgressFrozenIndexFallsBackToScan(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	proxy := etcdtest.NewProxy(t, e.URL)
	x := registry.Start(etcdtest.NewClient(t, []string{proxy.URL}), api.NewKeyspace(""), nil)
	t.Cleanup(x.Close)
	s := New(cli, Options{Validate: validate, Index: x})
	for i := range 4 {
		register(t, cli, fmt.Sprintf("h%d", i), nil, 0)
	}
	fleet := api.Scope{Kind: api.ScopeFleet}
	res, err := s.SetStop(ctx(t), fleet, true, "alice", "")
	if err != nil {
		t.Fatal(err)
	}
	// The stop is outside the registrations: a progress notification
	// brings the index to its revision (Sync asks for one).
	if !x.Sync(ctx(t), res.Revision) {
		t.Fatal("index never reached the stop's revision")
	}
	proxy.Cut()
	register(t, cli, "h0", nil, res.Revision)
	register(t, cli, "h1", nil, res.Revision)
	p, err := s.Progress(ctx(t), fleet, res.Revision)
	if err != nil || p.Targeted != 4 || p.Acknowledged != 2 {
		t.Fatalf("progress with the index cut off = %+v, %v; want 2 of 4 acknowledged (read from etcd)", p, err)
	}
	if frozen, _ := x.Revision(); p.AtRevision <= frozen {
		t.Fatalf("answered at revision %d, the frozen index's (%d)", p.AtRevision, frozen)
	}
}

func TestIndexAnswers(t *testing.T) {
	for _, tt := range []struct {
		fresh             bool
		before, rev, want int64
		answers           bool
	}{
		{true, 10, 10, 5, true},    // caught up with the cell
		{false, 10, 40, 20, true},  // behind the cell, moving, holds the change
		{false, 40, 40, 20, false}, // did not move while the request waited
		{false, 10, 15, 20, false}, // moving, but not yet at the change
	} {
		if got := indexAnswers(tt.fresh, tt.before, tt.rev, tt.want); got != tt.answers {
			t.Errorf("indexAnswers(%v, before %d, rev %d, want %d) = %v", tt.fresh, tt.before, tt.rev, tt.want, got)
		}
	}
}
