package metrics

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server/store"
)

// TestAggregate checks which hosts count as unacknowledged: a host is
// measured against the newest of the fleet document, its groups'
// documents and its own.
func TestAggregate(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := store.New(cli, store.Options{Validate: catalog.Validate, Now: func() time.Time { return t0 }})
	ctx := context.Background()
	fleet, err := s.SetStop(ctx, api.Scope{Kind: api.ScopeFleet}, true, "t", "")
	if err != nil {
		t.Fatal(err)
	}
	canary, err := s.SetStop(ctx, api.Scope{Kind: api.ScopeGroup, Label: "env", Value: "canary"}, true, "t", "")
	if err != nil {
		t.Fatal(err)
	}
	reg := func(name, env string, applied int64, host string) {
		b, _ := json.Marshal(api.Registration{Host: host, Labels: map[string]string{"env": env, "idc": "dc1"}, Applied: api.Applied{Revision: applied}})
		if _, err := cli.Put(ctx, s.Keyspace().Agent(name), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	reg("p1", "prod", fleet.Revision, "p1")     // acknowledged the fleet write
	reg("p2", "prod", 0, "p2")                  // behind
	reg("c1", "canary", fleet.Revision, "c1")   // behind its group's newer write
	reg("c2", "canary", canary.Revision, "bad") // up to date, but names another host
	registry := prometheus.NewRegistry()
	m := New(registry)
	if err := m.Aggregate(ctx, s, nil, t0.Add(90*time.Second)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{name: "unacknowledged", c: m.Unacknowledged, want: 2},
		{name: "lag", c: m.AckLagMax, want: 90},
		{name: "mismatched", c: m.Mismatched, want: 1},
		{name: "online prod", c: m.HostsOnline.WithLabelValues("dc1", "prod", "", ""), want: 2},
		{name: "online canary", c: m.HostsOnline.WithLabelValues("dc1", "canary", "", ""), want: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := testutil.ToFloat64(tt.c); got != tt.want {
				t.Fatalf("%s = %v, want %v", tt.name, got, tt.want)
			}
		})
	}
	mfs, err := registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				if strings.Contains("p1 p2 c1 c2 bad", lp.GetValue()) && lp.GetValue() != "" {
					t.Errorf("%s has a host name as label %s=%s", mf.GetName(), lp.GetName(), lp.GetValue())
				}
			}
		}
	}
}
