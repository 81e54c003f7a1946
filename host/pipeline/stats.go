package pipeline

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// PluginStats is one plugin's accounting, for the heartbeat and
// `vigil-host status`. Emitted = Delivered + the sum of Dropped + Queued +
// InPlugin, exactly.
type PluginStats struct {
	Plugin  string `json:"plugin"`
	Version string `json:"version"`
	// Emitted is the plugin's own cumulative count, summed over restarts.
	Emitted uint64 `json:"emitted"`
	// Received is what reached the host.
	Received  uint64 `json:"received"`
	Delivered uint64 `json:"delivered"`
	// Dropped counts by reason; only reasons with drops appear.
	Dropped map[string]uint64 `json:"dropped,omitempty"`
	// Queued is waiting in the host, including a batch being written.
	Queued uint64 `json:"queued"`
	// InPlugin is counted as emitted by the running plugin process but
	// not yet sent.
	InPlugin uint64 `json:"in_plugin"`
	// Counters are the plugin's own cumulative counters from its latest
	// batch (they restart from zero with the process).
	Counters map[string]uint64 `json:"counters,omitempty"`
}

// DroppedTotal returns the sum of s.Dropped.
func (s PluginStats) DroppedTotal() uint64 {
	var n uint64
	for _, v := range s.Dropped {
		n += v
	}
	return n
}

// Stats returns every registered plugin's accounting, by plugin name.
func (p *Pipeline) Stats() []PluginStats {
	ins := *p.inputs.Load()
	out := make([]PluginStats, 0, len(ins))
	for _, in := range ins {
		out = append(out, in.stats())
	}
	slices.SortFunc(out, func(a, b PluginStats) int { return strings.Compare(a.Plugin, b.Plugin) })
	return out
}

func (in *Input) stats() PluginStats {
	in.mu.Lock()
	defer in.mu.Unlock()
	s := PluginStats{
		Plugin:    in.name,
		Version:   in.version,
		Emitted:   in.baseEmitted + in.lastEmitted,
		Received:  in.received,
		Delivered: in.delivered,
		Dropped:   map[string]uint64{},
		Queued:    uint64(in.alerts.events + in.telem.events + in.writing),
		Counters:  maps.Clone(in.counters),
	}
	var pd uint64
	for k, v := range in.basePD {
		if v > 0 {
			s.Dropped[k] += v
		}
	}
	for k, v := range in.lastPD {
		pd += v
		if v > 0 {
			s.Dropped[k] += v
		}
	}
	for r, v := range in.dropped {
		if v > 0 {
			s.Dropped[hostReasons[r]] += v
		}
	}
	if sent := in.recvInc + pd; in.lastEmitted > sent {
		s.InPlugin = in.lastEmitted - sent
	}
	return s
}

// Metric descriptions. Labels are plugin and reason only: a per-host label
// would multiply the series by the fleet's size.
var (
	descEmitted   = prometheus.NewDesc("vigil_host_events_emitted_total", "Events the plugin reports emitted, summed over its restarts.", []string{"plugin"}, nil)
	descReceived  = prometheus.NewDesc("vigil_host_events_received_total", "Events that reached the host from the plugin.", []string{"plugin"}, nil)
	descDelivered = prometheus.NewDesc("vigil_host_events_delivered_total", "Events written to every sink.", []string{"plugin"}, nil)
	descDropped   = prometheus.NewDesc("vigil_host_events_dropped_total", "Events dropped, by reason.", []string{"plugin", "reason"}, nil)
	descQueued    = prometheus.NewDesc("vigil_host_events_queued", "Events waiting in the host's queue.", []string{"plugin"}, nil)
	descInPlugin  = prometheus.NewDesc("vigil_host_events_in_plugin", "Events the plugin counted but has not sent yet.", []string{"plugin"}, nil)
	descPanics    = prometheus.NewDesc("vigil_host_sink_panics_total", "Panics caught in sink writes.", nil, nil)
)

type collector struct{ p *Pipeline }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descEmitted, descReceived, descDelivered, descDropped, descQueued, descInPlugin, descPanics} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.p.Stats() {
		ch <- prometheus.MustNewConstMetric(descEmitted, prometheus.CounterValue, float64(s.Emitted), s.Plugin)
		ch <- prometheus.MustNewConstMetric(descReceived, prometheus.CounterValue, float64(s.Received), s.Plugin)
		ch <- prometheus.MustNewConstMetric(descDelivered, prometheus.CounterValue, float64(s.Delivered), s.Plugin)
		ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(s.Queued), s.Plugin)
		ch <- prometheus.MustNewConstMetric(descInPlugin, prometheus.GaugeValue, float64(s.InPlugin), s.Plugin)
		// Every known reason is exported, zero or not, so rate() works
		// from the first drop.
		reasons := map[string]uint64{DropPluginBufferFull: 0}
		for _, r := range hostReasons {
			reasons[r] = 0
		}
		maps.Copy(reasons, s.Dropped)
		for r, v := range reasons {
			ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(v), s.Plugin, r)
		}
	}
	ch <- prometheus.MustNewConstMetric(descPanics, prometheus.CounterValue, float64(c.p.panics.Load()))
}

// Collectors returns the pipeline's Prometheus collectors; they read
// Stats at scrape time and cost nothing on the event path.
func (p *Pipeline) Collectors() []prometheus.Collector { return []prometheus.Collector{collector{p}} }

// RegisterMetrics registers the pipeline's collectors on reg.
func (p *Pipeline) RegisterMetrics(reg prometheus.Registerer) error {
	for _, c := range p.Collectors() {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("registering pipeline metrics: %w", err)
		}
	}
	return nil
}
