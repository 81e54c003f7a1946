package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server/etcdembed"
	"github.com/vigil-hids/vigil/server/pki"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreCurrent()) }

func startReplica(t *testing.T, id string, endpoints []string) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, Config{ID: id, Listen: "127.0.0.1:0", MetricsListen: "127.0.0.1:0", EtcdEndpoints: endpoints, Insecure: true,
		CheckPlugin: catalog.Validate, LeaseTTL: 2 * time.Second, AggregateInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func scrape(t *testing.T, s *Server) string {
	t.Helper()
	resp, err := http.Get("http://" + s.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestReplicasElectOneLeader runs two replicas against one etcd: exactly
// one runs the fleet aggregation, the other takes over when it closes, and
// the fleet gauges carry label values, never host names.
func TestReplicasElectOneLeader(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	ks := api.NewKeyspace("")
	for _, h := range []struct{ name, env string }{{"web-1", "prod"}, {"web-2", "prod"}, {"db-1", "canary"}} {
		b, _ := json.Marshal(api.Registration{Host: h.name, Labels: map[string]string{"env": h.env, "idc": "dc1"}})
		if _, err := cli.Put(context.Background(), ks.Agent(h.name), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	a := startReplica(t, "a", e.Endpoints())
	waitFor(t, "a to lead", a.IsLeader)
	b := startReplica(t, "b", e.Endpoints())
	waitFor(t, "b to register", func() bool {
		st, err := b.Status(context.Background())
		return err == nil && len(st.Replicas) == 2
	})
	st, err := b.Status(context.Background())
	if err != nil || st.ElectionLeader != "a" || len(st.Replicas) != 2 || st.IsLeader {
		t.Fatalf("status from b: %+v %v", st, err)
	}
	waitFor(t, "hosts online on the leader", func() bool {
		return strings.Contains(scrape(t, a), `vigil_hosts_online{env="prod",group="",idc="dc1",product=""} 2`)
	})
	m := scrape(t, b)
	if strings.Contains(m, "vigil_hosts_online{") || !strings.Contains(m, "vigil_server_leader 0") {
		t.Fatalf("follower exports fleet gauges:\n%s", m)
	}
	if resp, err := http.Get("http://" + a.Addr() + "/metrics"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics on the API address: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if strings.Contains(scrape(t, a), "web-1") {
		t.Fatal("a host name appears in /metrics")
	}
	// A write is counted and leaves hosts unacknowledged until they apply it.
	if _, err := a.Store().SetStop(context.Background(), api.Scope{Kind: api.ScopeFleet}, true, "t", ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "unacknowledged hosts", func() bool {
		m := scrape(t, a)
		return strings.Contains(m, "vigil_hosts_unacknowledged 3") && strings.Contains(m, `vigil_desired_state_writes_total{result="ok",scope="fleet"} 1`)
	})
	a.Close()
	a.Close() // idempotent
	waitFor(t, "b to take over", b.IsLeader)
	st, err = b.Status(context.Background())
	if err != nil || st.ElectionLeader != "b" || len(st.Replicas) != 1 {
		t.Fatalf("status after failover: %+v %v", st, err)
	}
}

func TestStartValidatesAndCleansUp(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string
	}{
		{name: "nothing", cfg: Config{}, want: []string{"data-dir is required", "tls-ca, tls-cert and tls-key are required", "no plugin validator"}},
		{name: "insecure off loopback", cfg: Config{DataDir: "x", Insecure: true, Listen: "0.0.0.0:1", CheckPlugin: catalog.Validate},
			want: []string{`insecure mode serves only loopback addresses (got listen "0.0.0.0:1")`}},
		{name: "lease ttl", cfg: Config{DataDir: "x", Insecure: true, LeaseTTL: time.Millisecond, CheckPlugin: catalog.Validate},
			want: []string{"lease-ttl must be between 2s and 1h (got 1ms)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Start(context.Background(), tt.cfg)
			for _, w := range tt.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("Start = %v, want %q", err, w)
				}
			}
		})
	}
	// An etcd that is not there: Start fails and leaves nothing running
	// (goleak in TestMain checks the goroutines).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ports, _ := etcdtest.FreePorts(1)
	_, err := Start(ctx, Config{Listen: "127.0.0.1:0", EtcdEndpoints: []string{"http://127.0.0.1:" + itoa(ports[0])}, Insecure: true,
		CheckPlugin: catalog.Validate, DialTimeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "reading etcd") {
		t.Fatalf("Start without etcd = %v", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Fatal("unexpected cancel")
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestExternalEtcdWithTLS points the server at an etcd it did not start,
// which requires client certificates, with --etcd-ca/--etcd-cert/--etcd-key.
func TestExternalEtcdWithTLS(t *testing.T) {
	dir := t.TempDir()
	pd := filepath.Join(dir, "pki")
	if _, err := pki.Init(pd, pki.Options{}); err != nil {
		t.Fatal(err)
	}
	files := func(n string) pki.Files {
		return pki.Files{CA: filepath.Join(pd, "ca.crt"), Cert: filepath.Join(pd, n+".crt"), Key: filepath.Join(pd, n+".key")}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ext, err := etcdembed.Start(ctx, etcdembed.Config{DataDir: filepath.Join(dir, "etcd"), ClientURL: "http://127.0.0.1:0",
		PeerURL: "http://127.0.0.1:0", TLS: files("server")})
	if err != nil {
		t.Fatal(err)
	}
	defer ext.Close()
	// Without a client certificate the external etcd refuses the server.
	_, err = Start(ctx, Config{Listen: "127.0.0.1:0", EtcdEndpoints: []string{ext.Endpoint()}, EtcdTLS: pki.Files{CA: files("server").CA},
		TLS: files("server"), CheckPlugin: catalog.Validate, DialTimeout: time.Second})
	if err == nil {
		t.Fatal("started against a TLS etcd without a client certificate")
	}
	s, err := Start(ctx, Config{ID: "ext", Listen: "127.0.0.1:0", EtcdEndpoints: []string{ext.Endpoint()}, EtcdTLS: files("server"),
		TLS: files("server"), CheckPlugin: catalog.Validate})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Store().SetStop(ctx, api.Scope{Kind: api.ScopeFleet}, true, "t", ""); err != nil {
		t.Fatal(err)
	}
	st, err := s.Status(ctx)
	if err != nil || !st.Etcd.Healthy || !strings.HasPrefix(st.Etcd.Endpoints[0].Endpoint, "https://") {
		t.Fatalf("status: %+v %v", st, err)
	}
}

// TestServerSurvivesEtcdLeaderKill runs a replica against a three-member
// cluster of Debian's etcd and kills the etcd leader: writes through the API
// resume once a new leader is elected, the status names the dead member's
// endpoint, and the replica still holds (or regains) the election.
func TestServerSurvivesEtcdLeaderKill(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	s := startReplica(t, "r", c.Endpoints())
	waitFor(t, "r to lead", s.IsLeader)
	fleet := api.Scope{Kind: api.ScopeFleet}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s.Store().SetStop(ctx, fleet, true, "t", "before"); err != nil {
		t.Fatal(err)
	}
	old := c.Leader(t)
	c.Kill(t, old)
	c.WaitLeader(t, old)
	var err error
	for attempt := 0; attempt < 40; attempt++ {
		if _, err = s.Store().SetStop(ctx, fleet, false, "t", "after"); err == nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("writing after the etcd leader was killed: %v", err)
	}
	st, err := s.Status(ctx)
	if err != nil || !st.Etcd.Healthy {
		t.Fatalf("status: %+v %v", st, err)
	}
	failed := 0
	for _, e := range st.Etcd.Endpoints {
		if e.Err != "" {
			failed++
		}
	}
	if failed != 1 {
		t.Fatalf("want the killed member's endpoint reported, got %+v", st.Etcd.Endpoints)
	}
	waitFor(t, "r to lead again", s.IsLeader)
	if h, err := s.Store().History(ctx, fleet, 0); err != nil || len(h) != 2 {
		t.Fatalf("history: %v %v", h, err)
	}
}
