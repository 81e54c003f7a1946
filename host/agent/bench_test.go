package agent_test

import (
	"testing"
	"time"

	"github.com/vigil-hids/vigil/host/control"
	"github.com/vigil-hids/vigil/host/supervisor"
	"github.com/vigil-hids/vigil/internal/etcdtest"
)

// BenchmarkRestartAfterCrash measures the time from a plugin's death (the
// host records the error) to its replacement running again, with the
// default restart backoff (250 ms initial, jittered). Target: ≤ 1 s.
func BenchmarkRestartAfterCrash(b *testing.B) {
	cfg := hostConfig(b, testplugin("tp-crash", map[string]any{"exit_after": "1200ms"}))
	def := supervisor.DefaultOptions
	cfg.Supervisor.BackoffInitial = def.BackoffInitial
	cfg.Supervisor.BackoffMax = def.BackoffMax
	cfg.Supervisor.YoungAge = time.Second // a 1.2s life is not young: no quarantine, backoff resets
	a := start(b, cfg)
	var total, worst time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		before := pluginStatus(a, "tp-crash")
		var st supervisor.Status
		for {
			st = pluginStatus(a, "tp-crash")
			if st.State == supervisor.StateRunning && st.Restarts > before.Restarts && st.StartedAt.After(st.ErrorAt) {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		d := st.StartedAt.Sub(st.ErrorAt)
		total += d
		worst = max(worst, d)
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/restart")
	b.ReportMetric(float64(worst.Milliseconds()), "worst-ms")
}

// BenchmarkBootWhileEtcdDown measures how long a host that starts while
// etcd is unreachable takes to run its plugins again from the persisted
// desired state (control.offline_grace, default 1 s, then the plugin's
// launch). Target: ≤ 2 s.
func BenchmarkBootWhileEtcdDown(b *testing.B) {
	etcd := etcdtest.StartEmbedded(b)
	cfg := hostConfig(b, testplugin("tp-boot", nil))
	cc := control.Default()
	cc.Endpoints = etcd.Endpoints()
	cfg.Control = &cc
	first := start(b, cfg)
	for pluginStatus(first, "tp-boot").State != supervisor.StateRunning || !first.Snapshot().Control["connected"].(bool) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := first.Close(); err != nil {
		b.Fatal(err)
	}
	etcd.Close()
	var total, worst time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		a := start(b, cfg)
		for pluginStatus(a, "tp-boot").State != supervisor.StateRunning {
			time.Sleep(5 * time.Millisecond)
		}
		d := time.Since(t0)
		total += d
		worst = max(worst, d)
		b.StopTimer()
		if err := a.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/boot")
	b.ReportMetric(float64(worst.Milliseconds()), "worst-ms")
}
