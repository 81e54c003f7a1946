package control

import (
	"context"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
)

// BenchmarkRestartWhileEtcdDown measures how long a host that starts while
// etcd is unreachable takes to hand its persisted desired state to the
// applier (the supervisor then starts the plugins): the "plugins running
// again within 2s" figure of docs/scale.md. It reports ms-to-apply; with
// the default control.offline_grace of 1s it is about 1000.
func BenchmarkRestartWhileEtcdDown(b *testing.B) {
	e := etcdtest.StartEmbedded(b)
	cli := e.Client(b)
	dir := b.TempDir()
	cfg := Default()
	cfg.Endpoints, cfg.Host, cfg.StateDir = e.Endpoints(), "bench-1", dir
	on := true
	doc := api.DesiredState{Plugins: map[string]api.PluginState{"procmon": {Enabled: &on}}}
	if _, err := putDocErr(cli, ks.ScopeKey(api.Scope{Kind: api.ScopeFleet}), doc); err != nil {
		b.Fatal(err)
	}
	// One run with etcd up persists the state, as a host in service does.
	l, err := Start(context.Background(), cfg, &fakeApplier{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	<-l.Ready()
	l.Close()
	e.Close()

	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a := &fakeApplier{}
		began := time.Now()
		l, err := Start(context.Background(), cfg, a, nil)
		if err != nil {
			b.Fatal(err)
		}
		<-l.Ready()
		total += time.Since(began)
		if got, _ := a.last(); got.ds.Plugins["procmon"].Enabled == nil || !l.Status().FromDisk {
			b.Fatalf("applied %+v, not the persisted state", got.ds)
		}
		b.StopTimer()
		l.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-to-apply")
}
