package metrics

import "github.com/prometheus/client_golang/prometheus"

// Events are the metrics of the event ingest route (POST /v1/events). No
// series has a host label.
type Events struct {
	Received prometheus.Counter
	Bytes    prometheus.Counter
	Refused  *prometheus.CounterVec
}

// EventRefusals are the reasons of vigil_events_refused_total.
var EventRefusals = []string{"forbidden", "invalid", "too_large", "disabled", "write"}

// NewEvents creates the event ingest metrics and registers them on reg.
func NewEvents(reg prometheus.Registerer) *Events {
	m := &Events{
		Received: prometheus.NewCounter(prometheus.CounterOpts{Name: "vigil_events_received_total",
			Help: "Events accepted from hosts (host role) on POST /v1/events and written to the events file."}),
		Bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "vigil_events_received_bytes_total",
			Help: "Decompressed NDJSON bytes of the accepted events."}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_events_refused_total",
			Help: "POST /v1/events requests refused, by reason (forbidden, invalid, too_large, timeout, busy, disabled, write); a refused body writes nothing."}, []string{"reason"}),
	}
	reg.MustRegister(m.Received, m.Bytes, m.Refused)
	for _, r := range EventRefusals {
		m.Refused.WithLabelValues(r)
	}
	return m
}
