package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/internal/syncbuf"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server/etcdembed"
	"github.com/vigil-hids/vigil/server/etcdrbac"
	"github.com/vigil-hids/vigil/server/metrics"
	"github.com/vigil-hids/vigil/server/pki"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// startCompacting starts a replica on endpoints that compacts every
// interval (or not, with CompactOff). The lease is long so that a loaded
// machine does not move the leadership; Close revokes it for a takeover.
func startCompacting(t *testing.T, id string, endpoints []string, interval time.Duration) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, Config{ID: id, Listen: "127.0.0.1:0", EtcdEndpoints: endpoints, Insecure: true,
		CheckPlugin: catalog.Validate, LeaseTTL: 10 * time.Second, AggregateInterval: 100 * time.Millisecond,
		CompactInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func compactions(s *Server, cell string) float64 {
	return testutil.ToFloat64(s.compact.Compactions.WithLabelValues(cell))
}

func newTestCompactor(interval time.Duration, cells ...compactCell) (*compactor, *syncbuf.Buffer) {
	var logs syncbuf.Buffer
	return &compactor{interval: interval, cells: cells, probeKey: api.NewKeyspace("").ScopeKey(api.Scope{Kind: api.ScopeFleet}),
		log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		m:   metrics.NewCompaction(prometheus.NewRegistry())}, &logs
}

// TestLeaderCompactsOldRevisions runs the job on a real etcd with a 1 s
// interval: a read at a revision from before the compaction fails with
// ErrCompacted, while the current keys and /hids/history survive.
func TestLeaderCompactsOldRevisions(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	s := startCompacting(t, "a", e.Endpoints(), time.Second)
	waitFor(t, "a to lead", s.IsLeader)
	ctx := context.Background()
	fleet := api.Scope{Kind: api.ScopeFleet}
	var first int64
	for i := range 5 {
		res, err := s.Store().SetStop(ctx, fleet, i%2 == 0, "t", fmt.Sprintf("change %d", i))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = res.Revision
		}
	}
	// The gauge is set once Compact returns: wait for both.
	waitFor(t, "the first change's revision to be compacted", func() bool {
		_, err := cli.Get(ctx, s.ks.ScopeKey(fleet), clientv3.WithRev(first))
		return errors.Is(err, rpctypes.ErrCompacted) && testutil.ToFloat64(s.compact.Revision.WithLabelValues(DefaultCellName)) > float64(first)
	})
	if n := compactions(s, DefaultCellName); n < 1 {
		t.Errorf("compactions counted: %v", n)
	}
	if f := testutil.ToFloat64(s.compact.Failures.WithLabelValues(DefaultCellName)); f != 0 {
		t.Errorf("failures: %v", f)
	}
	// The current document (the last change: i=4, stop) and all five
	// history entries are still there.
	cur, err := s.Store().Get(ctx, fleet)
	if err != nil || cur.Document.State.Stop == nil || !*cur.Document.State.Stop || cur.Document.Seq != 5 {
		t.Fatalf("current fleet state after compaction: %+v, %v", cur, err)
	}
	h, err := s.Store().History(ctx, fleet, 0)
	if err != nil || len(h) != 5 {
		t.Fatalf("history after compaction: %d entries, %v", len(h), err)
	}
}

// TestCompactionKeepsTheLastInterval drives rounds by hand: a round
// compacts at the revision the previous round read, so what was written
// since (within the last interval) stays readable at its revision; a
// compaction someone else already did past that revision is not a failure.
func TestCompactionKeepsTheLastInterval(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	c, _ := newTestCompactor(time.Hour, compactCell{name: "c1", cli: cli})
	cell := c.cells[0]
	ctx := context.Background()
	put := func(k string) int64 {
		t.Helper()
		resp, err := cli.Put(ctx, k, "v")
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	old := put("/hids/test/old")
	put("/hids/test/old")              // a newer revision of the key: old may go
	r0 := c.round(ctx, c.log, cell, 0) // records only
	if n := testutil.CollectAndCount(c.m.Compactions); r0 <= old || n != 0 {
		t.Fatalf("first round: revision %d (old %d), compaction series %d", r0, old, n)
	}
	recent := put("/hids/test/recent")
	put("/hids/test/later")
	r1 := c.round(ctx, c.log, cell, r0) // compacts at r0
	if r1 <= recent {
		t.Fatalf("second round returned %d, want past %d", r1, recent)
	}
	if _, err := cli.Get(ctx, "/hids/test/old", clientv3.WithRev(old)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("read at %d (before the compaction at %d): %v, want ErrCompacted", old, r0, err)
	}
	if resp, err := cli.Get(ctx, "/hids/test/recent", clientv3.WithRev(recent)); err != nil || len(resp.Kvs) != 1 {
		t.Errorf("read at %d (written within the last interval): %v, %v", recent, resp, err)
	}
	if got := testutil.ToFloat64(c.m.Revision.WithLabelValues("c1")); got != float64(r0) {
		t.Errorf("compacted revision gauge %v, want %d", got, r0)
	}
	// Someone compacts past r1 first: our compaction at r1 finds it done.
	etcdtest.Compact(t, cli)
	c.round(ctx, c.log, cell, r1)
	if n, f := testutil.ToFloat64(c.m.Compactions.WithLabelValues("c1")), testutil.ToFloat64(c.m.Failures.WithLabelValues("c1")); n != 2 || f != 0 {
		t.Errorf("after an outside compaction: compactions %v failures %v, want 2 and 0", n, f)
	}
}

// TestCompactionOnlyOnTheLeader runs two replicas on one etcd: only the
// leader compacts; the other takes over when the leader closes.
func TestCompactionOnlyOnTheLeader(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	a := startCompacting(t, "a", e.Endpoints(), time.Second)
	waitFor(t, "a to lead", a.IsLeader)
	b := startCompacting(t, "b", e.Endpoints(), time.Second)
	ctx := context.Background()
	waitFor(t, "b to register", func() bool {
		st, err := b.Status(ctx)
		return err == nil && len(st.Replicas) == 2
	})
	waitFor(t, "two compactions by the leader", func() bool {
		// A write per check, so every round has a new revision.
		_, _ = a.Store().SetStop(ctx, api.Scope{Kind: api.ScopeFleet}, false, "t", "")
		return compactions(a, DefaultCellName) >= 2
	})
	if b.IsLeader() || testutil.CollectAndCount(b.compact.Compactions) != 0 {
		t.Fatalf("the follower compacts (leader %v, series %d)", b.IsLeader(), testutil.CollectAndCount(b.compact.Compactions))
	}
	a.Close()
	waitFor(t, "b to take over", b.IsLeader)
	waitFor(t, "a compaction by the new leader", func() bool {
		_, _ = b.Store().SetStop(ctx, api.Scope{Kind: api.ScopeFleet}, false, "t", "")
		return compactions(b, DefaultCellName) >= 1
	})
}

// TestCompactionCoversEveryCell runs a server over two cells: both cells
// are compacted, each under its own name.
func TestCompactionCoversEveryCell(t *testing.T) {
	ea, eb := etcdtest.StartEmbedded(t), etcdtest.StartEmbedded(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, Config{ID: "r1", Listen: "127.0.0.1:0", EtcdEndpoints: ea.Endpoints(), Insecure: true,
		CellName: "a", Cells: []CellConfig{{Name: "b", Endpoints: eb.Endpoints()}},
		CheckPlugin: catalog.Validate, LeaseTTL: 2 * time.Second, AggregateInterval: 100 * time.Millisecond,
		CompactInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	waitFor(t, "r1 to lead", s.IsLeader)
	clis := map[string]*clientv3.Client{"a": ea.Client(t), "b": eb.Client(t)}
	// A fresh cell's first compaction may be at revision 1, which keeps
	// revision 1: wait for one past it.
	compacted := func(cell string) float64 { return testutil.ToFloat64(s.compact.Revision.WithLabelValues(cell)) }
	waitFor(t, "a compaction of each cell past revision 1", func() bool {
		for _, cli := range clis {
			_, _ = cli.Put(context.Background(), "/hids/test/k", "v")
		}
		return compacted("a") > 1 && compacted("b") > 1
	})
	for name, cli := range clis {
		if _, err := cli.Get(context.Background(), "/hids/test/k", clientv3.WithRev(1)); !errors.Is(err, rpctypes.ErrCompacted) {
			t.Errorf("cell %s: read at revision 1: %v, want ErrCompacted", name, err)
		}
	}
}

// TestCompactionOff leaves the keyspace alone: after the replica has led
// for many aggregation rounds (and longer than the other tests' interval),
// the first revision is still readable and no compaction series exists.
func TestCompactionOff(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	s := startCompacting(t, "a", e.Endpoints(), CompactOff)
	waitFor(t, "a to lead", s.IsLeader)
	ctx := context.Background()
	first, err := s.Store().SetStop(ctx, api.Scope{Kind: api.ScopeFleet}, true, "t", "")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, "30 aggregation rounds and 3 s", func() bool {
		_, _ = s.Store().SetStop(ctx, api.Scope{Kind: api.ScopeFleet}, false, "t", "")
		return testutil.ToFloat64(s.metrics.Aggregations.WithLabelValues("ok")) >= 30 && time.Since(start) > 3*time.Second
	})
	if _, err := cli.Get(ctx, s.ks.ScopeKey(api.Scope{Kind: api.ScopeFleet}), clientv3.WithRev(first.Revision)); err != nil {
		t.Fatalf("read at the first revision with compaction off: %v", err)
	}
	if n := testutil.CollectAndCount(s.compact.Compactions); n != 0 {
		t.Fatalf("compaction series with compaction off: %d", n)
	}
}

// TestCompactionFailureIsCountedAndRetried gives the job two cells, one of
// them behind a closed client: its failures are counted round after round
// while the other cell is compacted.
func TestCompactionFailureIsCountedAndRetried(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	live := e.Client(t)
	broken := etcdtest.NewClient(t, e.Endpoints())
	_ = broken.Close()
	c, logs := newTestCompactor(200*time.Millisecond, compactCell{name: "live", cli: live}, compactCell{name: "broken", cli: broken})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "three failures on the broken cell and two compactions of the live one", func() bool {
		_, _ = live.Put(context.Background(), "/hids/test/k", "v")
		return testutil.ToFloat64(c.m.Failures.WithLabelValues("broken")) >= 3 && testutil.ToFloat64(c.m.Compactions.WithLabelValues("live")) >= 2
	})
	if f := testutil.ToFloat64(c.m.Failures.WithLabelValues("live")); f != 0 {
		t.Errorf("failures on the live cell: %v", f)
	}
	if !strings.Contains(logs.String(), "cell=broken") || !strings.Contains(logs.String(), "reading the current revision failed") {
		t.Errorf("no warning naming the broken cell:\n%s", logs.String())
	}
}

// TestCompactionReportsNOSPACE raises etcd's NOSPACE alarm: the round
// exports it, warns, and still compacts (etcd allows compaction under
// NOSPACE, it is how an operator recovers); disarmed, the gauge goes.
func TestCompactionReportsNOSPACE(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	c, logs := newTestCompactor(time.Hour, compactCell{name: "c1", cli: cli})
	ctx := context.Background()
	r0 := c.round(ctx, c.log, c.cells[0], 0)
	if _, err := cli.Put(ctx, "/hids/test/k", "v"); err != nil {
		t.Fatal(err)
	}
	mc := pb.NewMaintenanceClient(cli.ActiveConnection())
	if _, err := mc.Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	r1 := c.round(ctx, c.log, c.cells[0], r0)
	if got := testutil.ToFloat64(c.m.Alarms.WithLabelValues("c1", "NOSPACE")); got != 1 {
		t.Errorf("NOSPACE gauge %v, want 1", got)
	}
	if !strings.Contains(logs.String(), "etcd raised NOSPACE") || !strings.Contains(logs.String(), "etcdctl alarm disarm") {
		t.Errorf("no NOSPACE warning:\n%s", logs.String())
	}
	if n := testutil.ToFloat64(c.m.Compactions.WithLabelValues("c1")); n != 1 {
		t.Errorf("compactions under NOSPACE: %v, want 1", n)
	}
	if _, err := cli.AlarmDisarm(ctx, &clientv3.AlarmMember{Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	c.round(ctx, c.log, c.cells[0], r1)
	if n := testutil.CollectAndCount(c.m.Alarms); n != 0 {
		t.Errorf("alarm series after disarm: %d", n)
	}
}

func TestCompactIntervalValidation(t *testing.T) {
	base := Config{DataDir: "x", Insecure: true, CheckPlugin: catalog.Validate}
	for _, tt := range []struct {
		name string
		d    time.Duration
		want string
	}{
		{name: "default", d: 0},
		{name: "off", d: CompactOff},
		{name: "short for tests", d: time.Second},
		{name: "negative", d: -time.Minute, want: "compact-interval must be 0 (off) or a positive duration (got -1m0s)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			cfg.CompactInterval = tt.d
			err := cfg.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Validate = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestCompactionUnderEtcdAuth bootstraps etcd RBAC (as init does): over
// gRPC, etcd refuses vigil-server's user the compaction (only root may),
// which is counted and logged with the way out; the embedded etcd is
// compacted in-process, as etcd's own auto-compactor does.
func TestCompactionUnderEtcdAuth(t *testing.T) {
	dir := t.TempDir()
	pd := filepath.Join(dir, "pki")
	if _, err := pki.Init(pd, pki.Options{}); err != nil {
		t.Fatal(err)
	}
	files := pki.Files{CA: filepath.Join(pd, "ca.crt"), Cert: filepath.Join(pd, "server.crt"), Key: filepath.Join(pd, "server.key")}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := etcdembed.Start(ctx, etcdembed.Config{DataDir: filepath.Join(dir, "data"), ClientURL: "http://127.0.0.1:0",
		PeerURL: "http://127.0.0.1:0", TLS: files})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	tc, err := files.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint()}, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := etcdrbac.Bootstrap(ctx, cli, api.NewKeyspace("")); err != nil {
		t.Fatal(err)
	}
	put := func() {
		t.Helper()
		if _, err := cli.Put(ctx, "/hids/agent/master/h1", "v"); err != nil {
			t.Fatal(err)
		}
	}
	put()
	grpcCell := compactCell{name: "grpc", cli: cli}
	c, logs := newTestCompactor(time.Hour, grpcCell)
	r0 := c.round(ctx, c.log, grpcCell, 0)
	put()
	c.round(ctx, c.log, grpcCell, r0)
	if f := testutil.ToFloat64(c.m.Failures.WithLabelValues("grpc")); f != 1 || !strings.Contains(logs.String(), "grant-role vigil-server root") {
		t.Errorf("gRPC compaction as vigil-server: failures %v, want 1 and a hint in the log:\n%s", f, logs.String())
	}
	embedded := compactCell{name: "embedded", cli: cli, compact: e.Compact}
	r1 := c.round(ctx, c.log, embedded, 0)
	put()
	c.round(ctx, c.log, embedded, r1)
	if n, f := testutil.ToFloat64(c.m.Compactions.WithLabelValues("embedded")), testutil.ToFloat64(c.m.Failures.WithLabelValues("embedded")); n != 1 || f != 0 {
		t.Fatalf("in-process compaction: compactions %v failures %v\n%s", n, f, logs.String())
	}
	if _, err := cli.Get(ctx, "/hids/agent/master/h1", clientv3.WithRev(r1-1)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("read before the in-process compaction at %d: %v", r1, err)
	}
	// Again at the same revision: already compacted, not a failure.
	if err := e.Compact(ctx, r1); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("compacting again at %d: %v, want ErrCompacted", r1, err)
	}
}
