package metrics

import "github.com/prometheus/client_golang/prometheus"

// Compaction are the metrics of the leader's etcd compaction job
// (server/compact.go), one series per cell.
type Compaction struct {
	Compactions *prometheus.CounterVec
	Failures    *prometheus.CounterVec
	Revision    *prometheus.GaugeVec
	Alarms      *prometheus.GaugeVec
}

// NewCompaction creates the compaction metrics and registers them on reg.
func NewCompaction(reg prometheus.Registerer) *Compaction {
	m := &Compaction{
		Compactions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_etcd_compactions_total",
			Help: "Compactions of a cell's etcd keyspace done by this replica as leader (one already done past that revision by someone else counts too)."}, []string{"cell"}),
		Failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_etcd_compaction_failures_total",
			Help: "Compaction rounds of a cell that failed (reading the current revision or compacting); the job retries next interval."}, []string{"cell"}),
		Revision: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vigil_etcd_compacted_revision",
			Help: "Revision at which this replica last compacted the cell's etcd keyspace."}, []string{"cell"}),
		Alarms: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vigil_etcd_cell_alarm",
			Help: "1 while a member of the cell's etcd reports the alarm (NOSPACE: the cell is read-only); read by the leader's compaction job."}, []string{"cell", "alarm"}),
	}
	reg.MustRegister(m.Compactions, m.Failures, m.Revision, m.Alarms)
	return m
}

// Cell makes the cell's counters visible at zero.
func (m *Compaction) Cell(cell string) {
	m.Compactions.WithLabelValues(cell)
	m.Failures.WithLabelValues(cell)
}
