package agent

import (
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-hids/vigil/sdk"
)

// emitHeartbeat sends one "heartbeat" event for the host, one
// "sink_status" event per network sink and one "plugin_status" event per
// plugin through the pipeline, like any plugin's events.
func (a *Agent) emitHeartbeat() {
	snap := a.Snapshot()
	fields := []sdk.Field{
		sdk.String("version", snap.Version),
		sdk.Int("pid", int64(snap.PID)),
		sdk.Int("uptime_s", int64(a.clockSince())),
		sdk.Int("cpu_permille", int64(snap.CPUPercent*10)),
		sdk.Int("rss_bytes", int64(snap.RSSBytes)),
		sdk.Int("plugins", int64(len(snap.Plugins))),
		sdk.Bool("stopped", snap.Stopped),
	}
	_ = a.hb.Emit(&sdk.Event{Type: "heartbeat", Severity: sdk.SevInfo, Fields: fields})
	for _, name := range slices.Sorted(maps.Keys(snap.SinkCounts)) {
		c := snap.SinkCounts[name]
		sf := []sdk.Field{
			sdk.String("sink", name),
			sdk.Int("accepted", int64(c.Accepted)),
			sdk.Int("delivered", int64(c.Delivered)),
			sdk.Int("pending", int64(c.Pending)),
		}
		for reason, n := range c.Lost {
			sf = append(sf, sdk.Int("lost_"+reason, int64(n)))
		}
		if c.LastError != "" {
			sf = append(sf, sdk.String("last_error", c.LastError))
		}
		_ = a.hb.Emit(&sdk.Event{Type: "sink_status", Severity: sdk.SevInfo, Fields: sf})
	}
	for _, p := range snap.Plugins {
		var dropped uint64
		for _, n := range p.Dropped {
			dropped += n
		}
		pf := []sdk.Field{
			sdk.String("plugin", p.Name),
			sdk.String("plugin_version", p.Version),
			sdk.String("state", p.State),
			sdk.Int("pid", int64(p.PID)),
			sdk.Int("restarts", int64(p.Restarts)),
			sdk.Int("cpu_permille", int64(p.CPUPercent*10)),
			sdk.Int("rss_bytes", int64(p.RSSBytes)),
			sdk.Int("emitted", int64(p.Emitted)),
			sdk.Int("delivered", int64(p.Delivered)),
			sdk.Int("dropped", int64(dropped)),
			sdk.Int("queued", int64(p.Queued)),
		}
		for reason, n := range p.Dropped {
			pf = append(pf, sdk.Int("dropped_"+reason, int64(n)))
		}
		for name, n := range p.Counters {
			pf = append(pf, sdk.Int("counter_"+name, int64(n)))
		}
		if p.Breaker != "" {
			pf = append(pf, sdk.String("breaker", p.Breaker))
		}
		if p.LastError != "" {
			pf = append(pf, sdk.String("last_error", p.LastError))
		}
		if p.ConfigError != "" {
			pf = append(pf, sdk.String("config_error", p.ConfigError))
		}
		_ = a.hb.Emit(&sdk.Event{Type: "plugin_status", Severity: sdk.SevInfo, Fields: pf})
	}
}

func (a *Agent) clockSince() float64 { return time.Since(a.started).Seconds() }

var (
	descState    = prometheus.NewDesc("vigil_plugin_up", "1 if the plugin is running.", []string{"plugin"}, nil)
	descRestarts = prometheus.NewDesc("vigil_plugin_restarts_total", "Plugin restarts after a death.", []string{"plugin"}, nil)
)

// supervisorCollector exports plugin states without any per-host label
// (CPU and memory come from the governor's collector).
type supervisorCollector struct{ a *Agent }

func (c supervisorCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descState
	ch <- descRestarts
}

func (c supervisorCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.a.Snapshot().Plugins {
		up := 0.0
		if p.PID != 0 && p.State == "running" {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, up, p.Name)
		ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.CounterValue, float64(p.Restarts), p.Name)
	}
}
