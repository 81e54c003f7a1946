// Package metrics holds the server's Prometheus metrics and the fleet
// aggregation that the elected leader runs: hosts online by label (idc,
// env, group, product values only, never a host name), hosts that have not
// acknowledged their effective desired state and how long they lag, and
// etcd's health.
package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/registry"
	"github.com/vigil-hids/vigil/server/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Labels are the registration labels hosts are counted by.
var Labels = []string{"idc", "env", "group", "product"}

// Metrics are the server's collectors, registered on one registry.
type Metrics struct {
	Writes         *prometheus.CounterVec
	HostsOnline    *prometheus.GaugeVec
	Unacknowledged prometheus.Gauge
	AckLagMax      prometheus.Gauge
	Mismatched     prometheus.Gauge
	Leader         prometheus.Gauge
	EtcdUp         prometheus.Gauge
	EtcdHasLeader  prometheus.Gauge
	EtcdDBSize     prometheus.Gauge
	EtcdAlarms     prometheus.Gauge
	Aggregations   *prometheus.CounterVec
}

// New creates the metrics and registers them on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Writes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_desired_state_writes_total",
			Help: "Desired-state write attempts by scope kind and result (ok, conflict, invalid, error)."}, []string{"scope", "result"}),
		HostsOnline: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vigil_hosts_online",
			Help: "Registered (online) hosts by label values; set by the leader replica only."}, Labels),
		Unacknowledged: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vigil_hosts_unacknowledged",
			Help: "Online hosts whose applied revision is older than their effective desired state; leader only."}),
		AckLagMax: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vigil_acknowledgement_lag_seconds_max",
			Help: "Longest time since the desired-state write an online host has not yet acknowledged; leader only."}),
		Mismatched: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vigil_registrations_mismatched",
			Help: "Registrations whose value names another host than their key; leader only."}),
		Leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vigil_server_leader",
			Help: "1 if this replica holds the leader election for singleton jobs."}),
		EtcdUp: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vigil_etcd_up",
			Help: "1 if the last etcd status check succeeded."}),
		EtcdHasLeader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vigil_etcd_has_leader",
			Help: "1 if etcd reported a raft leader."}),
		EtcdDBSize: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vigil_etcd_db_size_bytes",
			Help: "Largest etcd backend size reported by an endpoint."}),
		EtcdAlarms: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vigil_etcd_alarms",
			Help: "Active etcd alarms (-1 if they cannot be read)."}),
		Aggregations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_fleet_aggregations_total",
			Help: "Fleet aggregation rounds run by this replica, by result."}, []string{"result"}),
	}
	reg.MustRegister(m.Writes, m.HostsOnline, m.Unacknowledged, m.AckLagMax, m.Mismatched, m.Leader,
		m.EtcdUp, m.EtcdHasLeader, m.EtcdDBSize, m.EtcdAlarms, m.Aggregations)
	return m
}

// OnWrite is a store.Options.OnWrite hook.
func (m *Metrics) OnWrite(kind api.ScopeKind, result string) {
	m.Writes.WithLabelValues(string(kind), result).Inc()
}

// Health records etcd's status.
func (m *Metrics) Health(st store.ClusterStatus, err error) {
	if err != nil {
		m.EtcdUp.Set(0)
		m.EtcdHasLeader.Set(0)
		return
	}
	m.EtcdUp.Set(1)
	m.EtcdHasLeader.Set(b2f(st.Leader != ""))
	m.EtcdDBSize.Set(float64(st.DBSize))
	if st.AlarmsError != "" {
		m.EtcdAlarms.Set(-1)
	} else {
		m.EtcdAlarms.Set(float64(len(st.Alarms)))
	}
}

// ClearFleet removes the fleet gauges (a replica that lost the election
// must not report figures a leader also reports).
func (m *Metrics) ClearFleet() {
	m.HostsOnline.Reset()
	m.Unacknowledged.Set(0)
	m.AckLagMax.Set(0)
	m.Mismatched.Set(0)
}

type scopeDoc struct {
	rev  int64
	time time.Time
}

// Aggregate reads every desired-state document and every registration
// once and sets the fleet gauges. now is the clock for the lag.
//
// With an index (x not nil and synced) the registrations come from memory.
func (m *Metrics) Aggregate(ctx context.Context, s *store.Store, x *registry.Index, now time.Time) error {
	err := m.aggregate(ctx, s, x, now)
	if err != nil {
		m.Aggregations.WithLabelValues("error").Inc()
	} else {
		m.Aggregations.WithLabelValues("ok").Inc()
	}
	return err
}

func (m *Metrics) aggregate(ctx context.Context, s *store.Store, x *registry.Index, now time.Time) error {
	ks := s.Keyspace()
	resp, err := s.Client().Get(ctx, ks.Configs(), clientv3.WithPrefix())
	if err != nil {
		return err
	}
	docs := make(map[string]scopeDoc, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var d struct {
			Time time.Time `json:"time"`
		}
		_ = json.Unmarshal(kv.Value, &d)
		docs[string(kv.Key)] = scopeDoc{rev: kv.ModRevision, time: d.Time}
	}
	fleetKey := ks.ScopeKey(api.Scope{Kind: api.ScopeFleet})
	type combo [4]string
	online := map[combo]float64{}
	var unacked, mismatched float64
	var lag time.Duration
	visit := func(name string, labels map[string]string, applied int64, mismatch bool) {
		var c combo
		for i, l := range Labels {
			c[i] = labels[l]
		}
		online[c]++
		if mismatch {
			mismatched++
		}
		target := docs[fleetKey]
		consider := func(key string) {
			if d, ok := docs[key]; ok && d.rev > target.rev {
				target = d
			}
		}
		for k, v := range labels {
			if api.ValidName(k) && api.ValidName(v) {
				consider(ks.ScopeKey(api.Scope{Kind: api.ScopeGroup, Label: k, Value: v}))
			}
		}
		if api.ValidName(name) {
			consider(ks.ScopeKey(api.Scope{Kind: api.ScopeHost, Host: name}))
		}
		if applied < target.rev {
			unacked++
			if l := now.Sub(target.time); l > lag {
				lag = l
			}
		}
	}
	err = registry.ErrNotSynced
	if x != nil {
		_, err = x.Each(func(name string, h registry.Host) { visit(name, h.Labels, h.Applied, h.Mismatch) })
	}
	if errors.Is(err, registry.ErrNotSynced) {
		err = s.Each(ctx, func(a store.Agent) error {
			visit(a.Name, a.Labels, a.Applied.Revision, a.Mismatch != "")
			return nil
		})
	}
	if err != nil {
		return err
	}
	m.HostsOnline.Reset()
	for c, n := range online {
		m.HostsOnline.WithLabelValues(c[:]...).Set(n)
	}
	m.Unacknowledged.Set(unacked)
	m.AckLagMax.Set(lag.Seconds())
	m.Mismatched.Set(mismatched)
	return nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
