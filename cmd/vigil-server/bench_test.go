package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/control"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server"
	"github.com/vigil-hids/vigil/server/client"
	"github.com/vigil-hids/vigil/server/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// BenchmarkFleetStopAcknowledged measures an emergency stop as an operator
// sees it: from the API call `POST /v1/fleet/stop` until the server's
// progress reports every host acknowledged, with real host control loops
// (no plugins) sharing 8 etcd clients, against vigil-server's embedded etcd
// with mutual TLS. One op is a stop and a resume, each waited for;
// "ms/stop" is the mean of both. Hosts: $VIGIL_BENCH_HOSTS (default 2000).
//
//	go test -run '^$' -bench FleetStopAcknowledged -benchtime 3x ./cmd/vigil-server
func BenchmarkFleetStopAcknowledged(b *testing.B) {
	hosts := 2000
	if v, err := strconv.Atoi(os.Getenv("VIGIL_BENCH_HOSTS")); err == nil && v > 0 {
		hosts = v
	}
	dir := b.TempDir()
	pd := filepath.Join(dir, "pki")
	if _, err := pki.Init(pd, pki.Options{}); err != nil {
		b.Fatal(err)
	}
	files := func(n string) pki.Files {
		return pki.Files{CA: filepath.Join(pd, "ca.crt"), Cert: filepath.Join(pd, n+".crt"), Key: filepath.Join(pd, n+".key")}
	}
	ctx := context.Background()
	s, err := server.Start(ctx, server.Config{ID: "bench", Listen: "127.0.0.1:0", DataDir: filepath.Join(dir, "data"),
		EtcdClientURL: "http://127.0.0.1:0", EtcdPeerURL: "http://127.0.0.1:0", TLS: files("server"), CheckPlugin: catalog.Validate})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	st, err := s.Status(ctx)
	if err != nil {
		b.Fatal(err)
	}
	tc, err := files("host").ClientConfig()
	if err != nil {
		b.Fatal(err)
	}
	clients := make([]*clientv3.Client, 8)
	for i := range clients {
		if clients[i], err = clientv3.New(clientv3.Config{Endpoints: st.Etcd.Members[0].ClientURLs, TLS: tc,
			DialTimeout: 5 * time.Second, Logger: zap.NewNop()}); err != nil {
			b.Fatal(err)
		}
		defer clients[i].Close()
	}
	recs := make([]*recorder, hosts)
	for i := range hosts {
		recs[i] = &recorder{}
		l, err := control.Start(ctx, control.Config{Host: fmt.Sprintf("h%06d", i), Labels: map[string]string{"env": "prod"},
			Version: "bench", LeaseTTL: 30 * time.Second, StatusInterval: time.Hour, Endpoints: []string{"unused"}},
			recs[i], nil, control.WithClient(clients[i%len(clients)]))
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
	}
	cl, err := client.New(client.Config{Server: "https://" + s.Addr(), TLS: files("operator")})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	fleet := api.Scope{Kind: api.ScopeFleet}
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if c, err := cl.Count(ctx, nil, ""); err == nil && c.Total == int64(hosts) {
			break
		} else if time.Now().After(deadline) {
			b.Fatalf("only %d of %d hosts registered: %v", c.Total, hosts, err)
		}
	}
	wait := func(stop bool) time.Duration {
		start := time.Now()
		res, err := cl.Stop(ctx, fleet, stop, "bench")
		if err != nil {
			b.Fatal(err)
		}
		for {
			p, err := cl.Progress(ctx, fleet, res.Revision)
			if err != nil {
				b.Fatal(err)
			}
			if p.Targeted == int64(hosts) && p.Done() {
				if os.Getenv("VIGIL_BENCH_DEBUG") != "" {
					var last time.Time
					for _, r := range recs {
						r.mu.Lock()
						if r.at.After(last) {
							last = r.at
						}
						r.mu.Unlock()
					}
					b.Logf("stop=%v: last host applied after %s, progress done after %s", stop, last.Sub(start), time.Since(start))
				}
				return time.Since(start)
			}
			if time.Since(start) > 2*time.Minute {
				b.Fatalf("%d of %d acknowledged after 2m", p.Acknowledged, p.Targeted)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	var total time.Duration
	b.ResetTimer()
	for range b.N {
		total += wait(true) + wait(false)
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(2*b.N), "ms/stop")
	b.ReportMetric(float64(hosts), "hosts")
}
