package governor

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-hids/vigil/host/breaker"
)

// Collector exports the governor's state as Prometheus metrics. Register it
// on the host's own registry: prometheus.NewRegistry().MustRegister(
// governor.NewCollector(gov)).
type Collector struct {
	g *Governor

	state, trips, cpu, rss, drops     *prometheus.Desc
	agentState, agentTrips, agentCPU  *prometheus.Desc
	cooldown, agentCooldown, cbPanics *prometheus.Desc
}

// NewCollector returns a collector over g.
func NewCollector(g *Governor) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("vigil_"+name, help, labels, nil)
	}
	return &Collector{
		g:             g,
		state:         d("plugin_breaker_state", "Plugin breaker state: 0 closed, 1 open, 2 half-open.", "plugin"),
		trips:         d("plugin_breaker_trips_total", "Plugin breaker trips by reason.", "plugin", "reason"),
		cooldown:      d("plugin_breaker_cooldown_seconds", "Time until an open plugin breaker lets a restart in.", "plugin"),
		cpu:           d("plugin_cpu_percent", "Plugin CPU use over the last interval, percent of one core.", "plugin"),
		rss:           d("plugin_memory_rss_bytes", "Plugin resident memory at the last sample.", "plugin"),
		drops:         d("plugin_rate_limited_events", "Events the rate limiter refused from the plugin in the last interval.", "plugin"),
		agentState:    d("agent_breaker_state", "Agent-wide breaker state: 0 closed, 1 open (all plugins stopped), 2 half-open."),
		agentTrips:    d("agent_breaker_trips_total", "Times the agent-wide CPU rule stopped every plugin."),
		agentCooldown: d("agent_breaker_cooldown_seconds", "Time until plugins may start again after the agent-wide rule fired."),
		agentCPU:      d("agent_cpu_percent", "CPU use of the host and all plugins over the last interval, percent of one core."),
		cbPanics:      d("governor_callback_panics_total", "Trip callbacks that panicked."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.state, c.trips, c.cooldown, c.cpu, c.rss, c.drops,
		c.agentState, c.agentTrips, c.agentCooldown, c.agentCPU, c.cbPanics} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.g.Status()
	gauge, counter := prometheus.GaugeValue, prometheus.CounterValue
	for _, p := range st.Plugins {
		ch <- prometheus.MustNewConstMetric(c.state, gauge, float64(p.Breaker.State), p.Name)
		for _, r := range []breaker.Reason{breaker.ReasonCPU, breaker.ReasonMemory, breaker.ReasonFlood, breaker.ReasonOOMKill} {
			ch <- prometheus.MustNewConstMetric(c.trips, counter, float64(p.Breaker.ByReason[r]), p.Name, string(r))
		}
		ch <- prometheus.MustNewConstMetric(c.cooldown, gauge, p.Breaker.CooldownLeft.Seconds(), p.Name)
		ch <- prometheus.MustNewConstMetric(c.cpu, gauge, p.Last.CPUPercent, p.Name)
		ch <- prometheus.MustNewConstMetric(c.rss, gauge, float64(p.Last.MemoryBytes), p.Name)
		ch <- prometheus.MustNewConstMetric(c.drops, gauge, float64(p.Last.FloodEvents), p.Name)
	}
	ch <- prometheus.MustNewConstMetric(c.agentState, gauge, float64(st.Agent.State))
	ch <- prometheus.MustNewConstMetric(c.agentTrips, counter, float64(st.Agent.Trips))
	ch <- prometheus.MustNewConstMetric(c.agentCooldown, gauge, st.Agent.CooldownLeft.Seconds())
	ch <- prometheus.MustNewConstMetric(c.agentCPU, gauge, st.AgentCPUPercent)
	ch <- prometheus.MustNewConstMetric(c.cbPanics, counter, float64(c.g.CallbackPanics()))
}
