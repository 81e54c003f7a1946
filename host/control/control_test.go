package control

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Process-wide singletons started by etcd's and grpc's packages.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
	)
}

var ks = api.NewKeyspace("")

func TestConfigValidate(t *testing.T) {
	good := testConfig([]string{"http://127.0.0.1:2379"}, "h1")
	tests := []struct {
		name string
		mod  func(*Config)
		want []string // substrings of the error; none: valid
	}{
		{name: "valid", mod: func(*Config) {}},
		{name: "zero durations take defaults", mod: func(c *Config) { c.LeaseTTL, c.BackoffMax = 0, 0 }},
		{name: "no endpoints", mod: func(c *Config) { c.Endpoints = nil }, want: []string{"control.endpoints must list at least one etcd URL (got none)"}},
		{name: "bad host", mod: func(c *Config) { c.Host = "../x" }, want: []string{`control.host must be`, `(got "../x")`}},
		{name: "bad label", mod: func(c *Config) { c.Labels = map[string]string{"env": "a b"} }, want: []string{`control.labels`, `"env": "a b"`}},
		{name: "ttl too short", mod: func(c *Config) { c.LeaseTTL = time.Second }, want: []string{"control.lease_ttl must be between 2s and 1h0m0s (got 1s)"}},
		{name: "partial tls", mod: func(c *Config) { c.CAFile = "ca.pem" }, want: []string{"control.ca_file, control.cert_file and control.key_file must be set together (got 1 of 3)"}},
		{
			name: "every problem at once",
			mod:  func(c *Config) { c.Host = ""; c.BackoffMax = time.Millisecond; c.StatusInterval = time.Millisecond },
			want: []string{"control.host", "control.backoff_max must be between 50ms", "control.status_interval must be between 100ms and 1h0m0s (got 1ms)"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.mod(&c)
			err := c.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestRegistrationAndDuplicateName(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	cfg := testConfig(e.Endpoints(), "web-1")
	cfg.StateDir = t.TempDir()
	cfg.Labels = map[string]string{"env": "prod"}
	a := &fakeApplier{status: map[string]api.PluginStatus{"procmon": {State: "running"}}}
	first := startLoop(t, cfg, a)
	eventually(t, 10*time.Second, "first host registered", func() bool {
		r, _, ok := getReg(t, cli, ks.Agent("web-1"))
		return ok && r.Plugins["procmon"].State == "running" && r.Labels["env"] == "prod"
	})
	holder, resp, _ := getReg(t, cli, ks.Agent("web-1"))
	if resp.Kvs[0].Lease != int64(first.Status().Lease) {
		t.Fatalf("key lease %x, want the loop's lease %x", resp.Kvs[0].Lease, first.Status().Lease)
	}

	// A second agent (another state dir: another machine) under the same name.
	cfg2 := cfg
	cfg2.StateDir = t.TempDir()
	second := startLoop(t, cfg2, &fakeApplier{})
	eventually(t, 10*time.Second, "second host refused", func() bool {
		return strings.Contains(second.Status().LastError, ErrNameTaken.Error())
	})
	msg := second.Status().LastError
	if !strings.Contains(msg, holder.Instance.ID[:12]) || !strings.Contains(msg, "lease expires in") {
		t.Fatalf("refusal %q does not name the holder %s and its lease", msg, holder.Instance)
	}
	if r, _, _ := getReg(t, cli, ks.Agent("web-1")); r.Instance.ID != holder.Instance.ID {
		t.Fatalf("registration taken over by %s", r.Instance)
	}

	// The holder leaves (revoking its lease); the second retries and wins.
	first.Close()
	eventually(t, 10*time.Second, "second host registered after the first left", func() bool {
		r, _, ok := getReg(t, cli, ks.Agent("web-1"))
		return ok && r.Instance.ID != holder.Instance.ID && second.Status().Connected
	})
}

func TestRestartReclaimsOwnKey(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	cfg := testConfig(e.Endpoints(), "db-1")
	cfg.StateDir = t.TempDir()
	cfg.LeaseTTL = time.Hour // the old lease would hold the name for an hour
	old := startLoop(t, cfg, &fakeApplier{})
	eventually(t, 10*time.Second, "registered", func() bool { return old.Status().Connected })
	oldLease := old.Status().Lease
	old.Abandon() // crash: the lease stays alive

	restarted := startLoop(t, cfg, &fakeApplier{})
	eventually(t, 10*time.Second, "restarted host reclaimed its key", func() bool {
		_, resp, ok := getReg(t, cli, ks.Agent("db-1"))
		return ok && restarted.Status().Connected && resp.Kvs[0].Lease == int64(restarted.Status().Lease)
	})
	if restarted.Status().Lease == oldLease {
		t.Fatalf("reclaimed with the old lease %x", oldLease)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ttl, err := cli.TimeToLive(ctx, oldLease); err != nil || ttl.TTL > 0 {
		t.Fatalf("old lease still alive after reclaim: ttl %v, err %v", ttl, err)
	}
}

func TestLeaseLossRegrants(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	cfg := testConfig(e.Endpoints(), "app-1")
	l := startLoop(t, cfg, &fakeApplier{})
	eventually(t, 10*time.Second, "registered", func() bool { return l.Status().Connected })
	lease := l.Status().Lease

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Revoke(ctx, lease); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	eventually(t, 10*time.Second, "key re-put with a new lease", func() bool {
		_, resp, ok := getReg(t, cli, ks.Agent("app-1"))
		return ok && resp.Kvs[0].Lease != int64(lease) && resp.Kvs[0].Lease == int64(l.Status().Lease)
	})
}

func TestDesiredStateMergedWatchedAndAcknowledged(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	cfg := testConfig(e.Endpoints(), "h1")
	cfg.Labels = map[string]string{"env": "prod", "idc": "sh"}
	fleetKey := ks.ScopeKey(api.Scope{Kind: api.ScopeFleet})
	envKey := ks.ScopeKey(api.Scope{Kind: api.ScopeGroup, Label: "env", Value: "prod"})
	idcKey := ks.ScopeKey(api.Scope{Kind: api.ScopeGroup, Label: "idc", Value: "sh"})
	hostKey := ks.ScopeKey(api.Scope{Kind: api.ScopeHost, Host: "h1"})
	otherKey := ks.ScopeKey(api.Scope{Kind: api.ScopeHost, Host: "h2"})

	putDoc(t, cli, fleetKey, api.DesiredState{LogLevel: "info", Plugins: map[string]api.PluginState{
		"procmon": {Enabled: ptr(true), Config: json.RawMessage(`{"queue_size":4096,"rate":100}`)},
	}})
	putDoc(t, cli, envKey, api.DesiredState{Plugins: map[string]api.PluginState{
		"procmon": {Config: json.RawMessage(`{"rate":200}`)},
	}})
	a := &fakeApplier{}
	l := startLoop(t, cfg, a)
	<-l.Ready()
	got, _ := a.last()
	if c := string(got.ds.Plugins["procmon"].Config); c != `{"queue_size":4096,"rate":200}` {
		t.Fatalf("merged procmon config %s, want fleet merged with group env=prod", c)
	}

	rev := putDoc(t, cli, idcKey, api.DesiredState{LogLevel: "debug"})
	eventually(t, 10*time.Second, "group idc applied", func() bool {
		got, _ := a.last()
		return got.rev == rev && got.ds.LogLevel == "debug"
	})
	rev = putDoc(t, cli, hostKey, api.DesiredState{Plugins: map[string]api.PluginState{"procmon": {Enabled: ptr(false)}}})
	eventually(t, 10*time.Second, "host layer applied and acknowledged", func() bool {
		got, _ := a.last()
		r, _, _ := getReg(t, cli, ks.Agent("h1"))
		return got.rev == rev && !*got.ds.Plugins["procmon"].Enabled && r.Applied.Revision == rev
	})
	n := len(a.applies)
	putDoc(t, cli, otherKey, api.DesiredState{Stop: ptr(true)})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	delRev := func() int64 {
		resp, err := cli.Delete(ctx, envKey)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}()
	eventually(t, 10*time.Second, "deleted group layer applied", func() bool {
		got, _ := a.last()
		return got.rev == delRev && string(got.ds.Plugins["procmon"].Config) == `{"queue_size":4096,"rate":100}`
	})
	a.mu.Lock()
	for _, ap := range a.applies[n:] {
		if ap.ds.Stop != nil {
			t.Errorf("another host's stop reached this host at revision %d", ap.rev)
		}
	}
	a.mu.Unlock()

	// A document that does not decode keeps the last good layer and is reported.
	if _, err := cli.Put(ctx, hostKey, "{not json"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "bad document reported", func() bool {
		r, _, _ := getReg(t, cli, ks.Agent("h1"))
		return strings.Contains(r.Applied.Error, "not a desired-state document")
	})
	if got, _ := a.last(); *got.ds.Plugins["procmon"].Enabled {
		t.Fatalf("bad host document dropped the last good host layer")
	}
}

func TestApplyRejectionReported(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	cfg := testConfig(e.Endpoints(), "h1")
	cfg.StateDir = t.TempDir()
	a := &fakeApplier{reject: func(ds api.DesiredState) error {
		if ds.LogLevel == "loud" {
			return errors.New("log_level must be a syslog level name (got loud)")
		}
		return nil
	}}
	l := startLoop(t, cfg, a)
	<-l.Ready()
	rev := putDoc(t, cli, ks.ScopeKey(api.Scope{Kind: api.ScopeFleet}), api.DesiredState{LogLevel: "loud"})
	eventually(t, 10*time.Second, "rejection in the registration", func() bool {
		r, _, _ := getReg(t, cli, ks.Agent("h1"))
		return r.Applied.Revision == rev && strings.Contains(r.Applied.Error, "got loud")
	})
	// What is in force is persisted, rejection and all: a reboot while etcd
	// is down must come back to the newest state, not an older one.
	if p, ok, _ := loadDesired(cfg.StateDir); !ok || p.Revision != rev {
		t.Fatalf("persisted state is %+v (found %v), want revision %d", p, ok, rev)
	}
}

// A broken watch stream is a fresh read at the current revision, never a
// resume from the revision the watches last saw (which etcd would catch up
// by scanning history, or refuse once compacted).
func TestBrokenStreamRereads(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	proxy := etcdtest.NewProxy(t, e.URL)
	hostKey := ks.ScopeKey(api.Scope{Kind: api.ScopeHost, Host: "h1"})
	putDoc(t, cli, hostKey, api.DesiredState{LogLevel: "info"})

	// The host reaches etcd through a proxy, with a lease that outlives
	// the outage so that only the watch has to recover.
	cfg := testConfig([]string{proxy.URL}, "h1")
	cfg.LeaseTTL = time.Minute
	a := &fakeApplier{}
	l := startLoop(t, cfg, a)
	eventually(t, 10*time.Second, "registered", func() bool { return l.Status().Connected })
	before := l.Status().Resyncs

	// While the host is cut off the state changes and history is
	// compacted: a watch resumed from where it was would be refused.
	proxy.Cut()
	rev := putDoc(t, cli, hostKey, api.DesiredState{LogLevel: "debug"})
	putDoc(t, cli, "/unrelated", api.DesiredState{})
	etcdtest.Compact(t, cli)
	proxy.Heal()
	eventually(t, 30*time.Second, "state re-read after compaction", func() bool {
		got, _ := a.last()
		return got.ds.LogLevel == "debug" && got.rev >= rev
	})
	if st := l.Status(); st.Resyncs == before || !strings.Contains(st.LastResync, "watch stream ended") {
		t.Fatalf("the host converged without a fresh read after its stream broke (resyncs %d, last %q)", st.Resyncs, st.LastResync)
	}
	rev = putDoc(t, cli, hostKey, api.DesiredState{LogLevel: "warning"})
	eventually(t, 10*time.Second, "watch works after the re-read", func() bool {
		got, _ := a.last()
		return got.ds.LogLevel == "warning" && got.rev == rev
	})
}

func TestStopFlagKeepsLeaseAndResumes(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	cfg := testConfig(e.Endpoints(), "h1")
	a := &fakeApplier{}
	l := startLoop(t, cfg, a)
	<-l.Ready()
	fleetKey := ks.ScopeKey(api.Scope{Kind: api.ScopeFleet})
	rev := putDoc(t, cli, fleetKey, api.DesiredState{Stop: ptr(true)})
	eventually(t, 10*time.Second, "stop acknowledged", func() bool {
		r, _, ok := getReg(t, cli, ks.Agent("h1"))
		return ok && r.Stopped && r.Applied.Revision == rev
	})
	lease := l.Status().Lease
	time.Sleep(3 * time.Second) // longer than the 2s TTL: the lease must be kept alive
	if l.Status().Lease != lease || !l.Status().Connected {
		t.Fatalf("stopped host lost its registration")
	}
	rev = putDoc(t, cli, fleetKey, api.DesiredState{Stop: ptr(false)})
	eventually(t, 10*time.Second, "resume acknowledged", func() bool {
		r, _, _ := getReg(t, cli, ks.Agent("h1"))
		got, _ := a.last()
		return !r.Stopped && r.Applied.Revision == rev && !*got.ds.Stop
	})
}

func TestRestartWhileEtcdDownUsesPersistedState(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	cfg := testConfig(e.Endpoints(), "h1")
	cfg.StateDir = t.TempDir()
	putDoc(t, cli, ks.ScopeKey(api.Scope{Kind: api.ScopeFleet}), api.DesiredState{
		Plugins: map[string]api.PluginState{"procmon": {Enabled: ptr(true)}},
	})
	l := startLoop(t, cfg, &fakeApplier{})
	<-l.Ready()
	l.Close()
	e.Close()

	a := &fakeApplier{}
	l2 := startLoop(t, cfg, a)
	select {
	case <-l2.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("loop not ready from the persisted state while etcd is down")
	}
	got, _ := a.last()
	if !*got.ds.Plugins["procmon"].Enabled || !l2.Status().FromDisk {
		t.Fatalf("applied %+v (from disk %v), want the persisted state", got.ds, l2.Status().FromDisk)
	}
	if l2.Status().Connected {
		t.Fatalf("connected to a closed etcd")
	}
}

func TestTasksRunOncePerHost(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	cfg := testConfig(e.Endpoints(), "h1")
	cfg.StateDir = t.TempDir()
	fleetKey := ks.ScopeKey(api.Scope{Kind: api.ScopeFleet})
	putDoc(t, cli, fleetKey, api.DesiredState{Tasks: []api.Task{
		{ID: "t1", Plugin: "vulnscan", Name: "scan"},
		{ID: "t2", Plugin: "vulnscan", Name: "fail"},
	}})
	a := &fakeApplier{}
	l := startLoop(t, cfg, a)
	eventually(t, 10*time.Second, "task results reported", func() bool {
		r, _, _ := getReg(t, cli, ks.Agent("h1"))
		return len(r.Tasks) == 2
	})
	r, _, _ := getReg(t, cli, ks.Agent("h1"))
	for _, res := range r.Tasks {
		if (res.ID == "t2") != strings.Contains(res.Error, "failed on purpose") {
			t.Errorf("task result %+v", res)
		}
	}
	// Another event and a restart: nothing runs twice.
	putDoc(t, cli, fleetKey, api.DesiredState{LogLevel: "debug", Tasks: []api.Task{
		{ID: "t1", Plugin: "vulnscan", Name: "scan"},
		{ID: "t2", Plugin: "vulnscan", Name: "fail"},
	}})
	l.Close()
	l2 := startLoop(t, cfg, a)
	<-l2.Ready()
	time.Sleep(500 * time.Millisecond)
	if ids := a.taskIDs(); len(ids) != 2 {
		t.Fatalf("tasks run %v, want t1 and t2 once each", ids)
	}
}

func TestTasksWaitWhileStopped(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	cfg := testConfig(e.Endpoints(), "h1")
	fleetKey := ks.ScopeKey(api.Scope{Kind: api.ScopeFleet})
	task := api.Task{ID: "t1", Plugin: "p", Name: "scan"}
	putDoc(t, cli, fleetKey, api.DesiredState{Stop: ptr(true), Tasks: []api.Task{task}})
	a := &fakeApplier{}
	l := startLoop(t, cfg, a)
	<-l.Ready()
	time.Sleep(300 * time.Millisecond)
	if ids := a.taskIDs(); len(ids) != 0 {
		t.Fatalf("task ran while stopped: %v", ids)
	}
	putDoc(t, cli, fleetKey, api.DesiredState{Stop: ptr(false), Tasks: []api.Task{task}})
	eventually(t, 10*time.Second, "task run after resume", func() bool { return len(a.taskIDs()) == 1 })
}

func TestSpreadDelay(t *testing.T) {
	tests := []struct {
		name   string
		spread time.Duration
	}{
		{name: "no spread", spread: 0},
		{name: "one minute", spread: time.Minute},
		{name: "one day", spread: 24 * time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[time.Duration]bool{}
			for i := 0; i < 100; i++ {
				host := "host-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
				d := SpreadDelay(host, "task", tc.spread)
				if d < 0 || (tc.spread > 0 && d >= tc.spread) || (tc.spread == 0 && d != 0) {
					t.Fatalf("SpreadDelay(%s) = %s, outside [0, %s)", host, d, tc.spread)
				}
				if d != SpreadDelay(host, "task", tc.spread) {
					t.Fatalf("SpreadDelay(%s) not stable", host)
				}
				seen[d] = true
			}
			if tc.spread > 0 && len(seen) < 90 {
				t.Fatalf("100 hosts got only %d distinct delays", len(seen))
			}
		})
	}
}

func TestSharedClient(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	shared := etcdtest.NewClient(t, e.Endpoints())
	var loops []*Loop
	for _, h := range []string{"a", "b", "c"} {
		loops = append(loops, startLoop(t, testConfig(e.Endpoints(), h), &fakeApplier{}, WithClient(shared)))
	}
	rev := putDoc(t, cli, ks.ScopeKey(api.Scope{Kind: api.ScopeFleet}), api.DesiredState{Stop: ptr(true)})
	eventually(t, 10*time.Second, "all hosts acknowledged", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, ks.Agents(), clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) != 3 {
			return false
		}
		for _, kv := range resp.Kvs {
			var r api.Registration
			if json.Unmarshal(kv.Value, &r) != nil || r.Applied.Revision < rev {
				return false
			}
		}
		return true
	})
	loops[0].Close() // must not close the shared client
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := shared.Get(ctx, "x"); err != nil {
		t.Fatalf("shared client unusable after one loop closed: %v", err)
	}
}

func TestAckSpreadDelaysOnlySharedAcknowledgements(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	// A host whose moment in a one-minute window is late enough that the
	// test would notice an acknowledgement written at once.
	host := ""
	for i := 0; host == ""; i++ {
		h := "h" + strconv.Itoa(i)
		if SpreadDelay(h, "ack", time.Minute) > 30*time.Second {
			host = h
		}
	}
	cfg := testConfig(e.Endpoints(), host)
	cfg.AckSpread = time.Minute
	a := &fakeApplier{}
	l := startLoop(t, cfg, a)
	eventually(t, 10*time.Second, "registered", func() bool { return l.Status().Connected })

	fleetRev := putDoc(t, cli, ks.ScopeKey(api.Scope{Kind: api.ScopeFleet}), api.DesiredState{Stop: ptr(true)})
	eventually(t, 10*time.Second, "fleet stop applied at once", func() bool {
		got, _ := a.last()
		return got.rev == fleetRev
	})
	time.Sleep(time.Second)
	if r, _, _ := getReg(t, cli, ks.Agent(host)); r.Applied.Revision >= fleetRev {
		t.Fatalf("fleet change acknowledged before the host's moment of the spread")
	}
	hostRev := putDoc(t, cli, ks.ScopeKey(api.Scope{Kind: api.ScopeHost, Host: host}), api.DesiredState{LogLevel: "debug"})
	eventually(t, 10*time.Second, "host change acknowledged at once", func() bool {
		r, _, _ := getReg(t, cli, ks.Agent(host))
		return r.Applied.Revision == hostRev && r.Stopped
	})
}

func TestPeriodicResync(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cfg := testConfig(e.Endpoints(), "h1")
	cfg.ResyncInterval = time.Second
	a := &fakeApplier{}
	l := startLoop(t, cfg, a)
	eventually(t, 10*time.Second, "two periodic re-reads", func() bool {
		st := l.Status()
		return st.Resyncs >= 2 && strings.Contains(st.LastResync, "periodic")
	})
	if !l.Status().Connected {
		t.Fatalf("a periodic re-read dropped the registration")
	}
}

// A document larger than gRPC's default 4 MiB receive limit (etcd accepts
// up to --max-request-bytes, 64 MiB at most) arrives through the watch
// like any other, not as a broken stream and a re-read after every change.
func TestLargeDocumentThroughWatch(t *testing.T) {
	e := etcdtest.StartEmbedded(t, func(c *embed.Config) { c.MaxRequestBytes = 8 << 20 })
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 5 * time.Second, MaxCallSendMsgSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	cfg := testConfig(e.Endpoints(), "h1")
	cfg.LeaseTTL = time.Minute
	cfg.ResyncInterval = time.Hour
	a := &fakeApplier{}
	l := startLoop(t, cfg, a)
	eventually(t, 10*time.Second, "registered", func() bool { return l.Status().Connected })
	before := l.Status().Resyncs

	blob, _ := json.Marshal(map[string]string{"blob": strings.Repeat("x", 5<<20)})
	hostKey := ks.ScopeKey(api.Scope{Kind: api.ScopeHost, Host: "h1"})
	rev := putDoc(t, cli, hostKey, api.DesiredState{Plugins: map[string]api.PluginState{"big": {Config: blob}}})
	eventually(t, 20*time.Second, "the 5 MiB document applied", func() bool {
		got, _ := a.last()
		return got.rev == rev && len(got.ds.Plugins["big"].Config) == len(blob)
	})
	if st := l.Status(); st.Resyncs != before {
		t.Fatalf("the document came by a re-read (resyncs %d → %d, last %q), not through the watch", before, st.Resyncs, st.LastResync)
	}
}
