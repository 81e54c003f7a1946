package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
)

// Tests against a three-member cluster of Debian's etcd (etcd-server
// package, /usr/bin/etcd): members die, stop and freeze while hosts follow
// their desired state.

const clusterHosts = 12

func startClusterHosts(t *testing.T, c *etcdtest.Cluster) map[string]*fakeApplier {
	t.Helper()
	appliers := map[string]*fakeApplier{}
	for i := 0; i < clusterHosts; i++ {
		host := fmt.Sprintf("node-%02d", i)
		cfg := testConfig(c.Endpoints(), host)
		cfg.LeaseTTL = 5 * time.Second
		cfg.RequestTimeout = 3 * time.Second
		cfg.ResyncInterval = 10 * time.Second // a member freezing can hang a stream
		cfg.StateDir = t.TempDir()
		a := &fakeApplier{}
		appliers[host] = a
		l := startLoop(t, cfg, a)
		t.Cleanup(func() {
			if t.Failed() {
				last, _ := a.last()
				t.Logf("%s: %+v; last apply rev %d at %s", host, l.Status(), last.rev, last.at.Format("15:04:05.000"))
			}
		})
	}
	cli := c.Client(t)
	waitAllRegs(t, cli, "every host registered", func(api.Registration) bool { return true })
	return appliers
}

// waitAllRegs waits until at least clusterHosts registrations exist and
// each satisfies ok.
func waitAllRegs(t *testing.T, cli *clientv3.Client, what string, ok func(api.Registration) bool) {
	t.Helper()
	var last string
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		resp, err := cli.Get(ctx, ks.Agents(), clientv3.WithPrefix())
		cancel()
		if err == nil {
			good := 0
			var bad []string
			for _, kv := range resp.Kvs {
				var r api.Registration
				if json.Unmarshal(kv.Value, &r) == nil && ok(r) {
					good++
				} else {
					bad = append(bad, string(kv.Key))
				}
			}
			if good == len(resp.Kvs) && good >= clusterHosts {
				return
			}
			last = fmt.Sprintf("%d of %d hosts; not yet: %v", good, clusterHosts, bad)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestClusterLeaderKilledDuringFleetStop(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	appliers := startClusterHosts(t, c)
	cli := c.Client(t)
	fleetKey := ks.ScopeKey(api.Scope{Kind: api.ScopeFleet})

	leader := c.Leader(t)
	type result struct {
		rev int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		rev, err := putDocErr(cli, fleetKey, api.DesiredState{Stop: ptr(true)})
		done <- result{rev, err}
	}()
	c.Kill(t, leader)
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	rev := res.rev
	waitAllRegs(t, cli, "every host stopped", func(r api.Registration) bool {
		return r.Stopped && r.Applied.Revision >= rev
	})
	for host, a := range appliers {
		if got, _ := a.last(); got.ds.Stop == nil || !*got.ds.Stop {
			t.Errorf("%s acknowledged the stop but its applier got %+v", host, got.ds)
		}
	}

	c.Restart(t, leader)
	rev = putDoc(t, cli, fleetKey, api.DesiredState{Stop: ptr(false)})
	waitAllRegs(t, cli, "every host resumed", func(r api.Registration) bool {
		return !r.Stopped && r.Applied.Revision >= rev
	})
}

func TestClusterMemberStoppedAndBack(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	startClusterHosts(t, c)
	cli := c.Client(t)
	fleetKey := ks.ScopeKey(api.Scope{Kind: api.ScopeFleet})

	follower := (c.Leader(t) + 1) % 3
	other := (follower + 1) % 3
	// One more host talks only to the two members stopped in turn below,
	// so one of the stops breaks its watch stream for certain.
	eps := c.Endpoints()
	cfg := testConfig([]string{eps[follower], eps[other]}, "node-pair")
	cfg.LeaseTTL = 30 * time.Second
	cfg.RequestTimeout = 3 * time.Second
	cfg.ResyncInterval = time.Hour // only a broken stream re-reads
	cfg.StateDir = t.TempDir()
	pair := startLoop(t, cfg, &fakeApplier{})
	eventually(t, 30*time.Second, "node-pair registered", func() bool { return pair.Status().Connected })

	c.Stop(t, follower)
	rev := putDoc(t, cli, fleetKey, api.DesiredState{LogLevel: "debug"})
	waitAllRegs(t, cli, "change applied with a member down", func(r api.Registration) bool {
		return r.Applied.Revision >= rev
	})
	c.Restart(t, follower)
	// Take another member away so that the restarted one must serve.
	c.Stop(t, other)
	rev = putDoc(t, cli, fleetKey, api.DesiredState{LogLevel: "info"})
	waitAllRegs(t, cli, "change applied after the member came back (node-pair too)", func(r api.Registration) bool {
		return r.Applied.Revision >= rev
	})
	// The host's stream died with its member: the host read its state
	// again and watched from the current revision, instead of having its
	// watches resumed elsewhere from the revision they last saw.
	if st := pair.Status(); st.Resyncs == 0 || !strings.Contains(st.LastResync, "watch stream ended") {
		t.Fatalf("node-pair: resyncs %d, last %q; want a fresh read after its stream broke", st.Resyncs, st.LastResync)
	}
	c.Restart(t, other)
}

func TestClusterFrozenMember(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	appliers := startClusterHosts(t, c)
	cli := etcdtest.NewClient(t, c.Endpoints()[1:2])
	fleetKey := ks.ScopeKey(api.Scope{Kind: api.ScopeFleet})

	c.Freeze(t, 0) // resumed by Thaw below or by the cluster's cleanup
	rev := putDoc(t, cli, fleetKey, api.DesiredState{LogLevel: "debug"})
	waitAllRegs(t, cli, "change applied with a frozen member", func(r api.Registration) bool {
		return r.Applied.Revision >= rev
	})
	for host, a := range appliers {
		if got, _ := a.last(); got.ds.LogLevel != "debug" {
			t.Errorf("%s applied %+v, want log level debug", host, got.ds)
		}
	}
	c.Thaw(t, 0)
	rev = putDoc(t, cli, fleetKey, api.DesiredState{LogLevel: "info"})
	waitAllRegs(t, cli, "change applied after thaw", func(r api.Registration) bool {
		return r.Applied.Revision >= rev
	})
}

// An acknowledgement sent through a follower to a leader that then stops
// answering is lost, and etcd fails it only after its request timeout
// (5 s + 2 × election timeout). The loop probes its watch stream's member
// for the raft term while the write is pending and sends it again as soon
// as a new leader is elected (errLeaderChanged), not after the timeout.
func TestClusterAckResentOnLeaderChange(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	leader := c.Leader(t)
	follower := (leader + 1) % 3
	cfg := testConfig(c.Endpoints()[follower:follower+1], "node-probe")
	cfg.LeaseTTL = 30 * time.Second
	// Longer than etcd's own request timeout (7 s here): only the probe
	// can end the write early.
	cfg.RequestTimeout = 30 * time.Second
	cfg.LeaderProbe = 200 * time.Millisecond
	l := startLoop(t, cfg, &fakeApplier{})
	eventually(t, 30*time.Second, "registered", func() bool { return l.Status().Connected })

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ws, err := l.openWatches(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.close()
	cli := c.Client(t)
	resp, err := cli.Get(ctx, l.key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("reading the registration: %v %v", resp, err)
	}
	reg := &registration{lease: l.Status().Lease, createRev: resp.Kvs[0].CreateRevision}
	before := ws.term.Load()
	if before == 0 {
		t.Fatal("the watch creation reported no raft term")
	}

	c.Freeze(t, leader) // thawed by the cluster's cleanup
	_, err = l.ackOnce(ctx, reg, `{"host":"node-probe"}`, ws)
	switch {
	case err == nil:
		// The write reached a leader after all (the new one was elected
		// before it was forwarded, or it committed as the probe saw the
		// new term): nothing was lost, so there was nothing to resend.
		// What must never happen is the write hanging until the request
		// timeout, which returns a different error.
		t.Logf("the write committed across the election (term %d, now %d); the resend path was not needed", before, ws.term.Load())
		return
	case !errors.Is(err, errLeaderChanged):
		t.Fatalf("ackOnce with the leader frozen = %v, want errLeaderChanged (term %d, now %d)", err, before, ws.term.Load())
	}
	if ws.term.Load() <= before {
		t.Fatalf("term %d after the election, want more than %d", ws.term.Load(), before)
	}
	// The term rises when the election starts; once a new leader is
	// known, the write sent again goes to it.
	c.WaitLeader(t, leader)
	if _, err := l.ackOnce(ctx, reg, `{"host":"node-probe"}`, ws); err != nil {
		t.Fatalf("ackOnce after the election: %v", err)
	}
}
