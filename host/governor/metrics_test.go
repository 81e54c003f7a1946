package governor

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vigil-hids/vigil/host/breaker"
)

func TestCollector(t *testing.T) {
	g, clock, _ := newGov(t, Config{})
	src := newSource(clock, 50)
	g.Add("procmon", limits(t, breaker.ProfileNormal)).AttachSource(1, src)
	g.Add("netmon", limits(t, breaker.ProfileNormal))
	for range 5 {
		clock.Advance(g.Config().Interval)
		g.Sample()
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(g))
	want := `
# HELP vigil_plugin_breaker_state Plugin breaker state: 0 closed, 1 open, 2 half-open.
# TYPE vigil_plugin_breaker_state gauge
vigil_plugin_breaker_state{plugin="netmon"} 0
vigil_plugin_breaker_state{plugin="procmon"} 1
# HELP vigil_plugin_breaker_trips_total Plugin breaker trips by reason.
# TYPE vigil_plugin_breaker_trips_total counter
vigil_plugin_breaker_trips_total{plugin="netmon",reason="cpu"} 0
vigil_plugin_breaker_trips_total{plugin="netmon",reason="event_flood"} 0
vigil_plugin_breaker_trips_total{plugin="netmon",reason="memory"} 0
vigil_plugin_breaker_trips_total{plugin="netmon",reason="oom_kill"} 0
vigil_plugin_breaker_trips_total{plugin="procmon",reason="cpu"} 1
vigil_plugin_breaker_trips_total{plugin="procmon",reason="event_flood"} 0
vigil_plugin_breaker_trips_total{plugin="procmon",reason="memory"} 0
vigil_plugin_breaker_trips_total{plugin="procmon",reason="oom_kill"} 0
# HELP vigil_agent_breaker_trips_total Times the agent-wide CPU rule stopped every plugin.
# TYPE vigil_agent_breaker_trips_total counter
vigil_agent_breaker_trips_total 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"vigil_plugin_breaker_state", "vigil_plugin_breaker_trips_total", "vigil_agent_breaker_trips_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(NewCollector(g)); n != 2*9+5 {
		t.Errorf("%d metrics, want %d", n, 2*9+5)
	}
}
