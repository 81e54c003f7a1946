package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/syncbuf"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server"
	"github.com/vigil-hids/vigil/server/pki"
)

func TestCompactIntervalFlag(t *testing.T) {
	tests := []struct {
		name string
		arg  string
		want time.Duration
		err  string
	}{
		{name: "default", want: server.DefaultCompactInterval},
		{name: "off", arg: "0", want: server.CompactOff},
		{name: "minimum", arg: "1m", want: time.Minute},
		{name: "hour", arg: "1h", want: time.Hour},
		{name: "too short", arg: "30s", err: "compact-interval must be 0 (off) or at least 1m0s (got 30s)"},
		{name: "negative", arg: "-5m", err: "compact-interval must be 0 (off) or at least 1m0s (got -5m0s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := newRoot()
			args := []string{"--insecure"}
			if tt.arg != "" {
				args = append(args, "--compact-interval", tt.arg)
			}
			if err := root.ParseFlags(args); err != nil {
				t.Fatal(err)
			}
			d, _ := root.Flags().GetDuration("compact-interval")
			got, err := compactInterval(d)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("compactInterval(%s) = %v, %v; want error %q", d, got, err, tt.err)
				}
				// The command refuses it before starting anything.
				root = newRoot()
				root.SetArgs(append(args, "--data-dir", t.TempDir()))
				if err := root.Execute(); err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("vigil-server %v = %v, want %q", args, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("compactInterval(%s) = %v, %v; want %v", d, got, err, tt.want)
			}
		})
	}
}

// counterValue returns the value of the metric name{cell="default"} in reg, 0 if
// it is not there.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "cell" && l.GetValue() == server.DefaultCellName {
					if c := m.GetCounter(); c != nil {
						return c.GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}

// TestCompactionUnderRBAC runs the compaction job as the production setup
// has it: etcd authentication on (init), the server as etcd user
// vigil-server. It may compact and read the alarms.
func TestCompactionUnderRBAC(t *testing.T) {
	d := runInit(t)
	pd, data, curl, purl := d.pki, d.data, d.clientURL, d.peerURL
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg := prometheus.NewRegistry()
	var logs syncbuf.Buffer
	s, err := server.Start(ctx, server.Config{ID: "r1", Listen: "127.0.0.1:0", DataDir: data, EtcdClientURL: curl, EtcdPeerURL: purl,
		TLS:         pki.Files{CA: filepath.Join(pd, "ca.crt"), Cert: filepath.Join(pd, "server.crt"), Key: filepath.Join(pd, "server.key")},
		CheckPlugin: catalog.Validate, CompactInterval: time.Second, Registry: reg,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for deadline := time.Now().Add(30 * time.Second); counterValue(t, reg, "vigil_etcd_compactions_total") < 2; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no compaction under RBAC; logs:\n%s", logs.String())
		}
		if _, err := s.Store().SetStop(ctx, api.Scope{Kind: api.ScopeFleet}, false, "admin", ""); err != nil {
			t.Fatal(err)
		}
	}
	if f := counterValue(t, reg, "vigil_etcd_compaction_failures_total"); f != 0 {
		t.Errorf("compaction failures under RBAC: %v\n%s", f, logs.String())
	}
	if strings.Contains(logs.String(), "reading etcd alarms failed") {
		t.Errorf("alarms unreadable under RBAC:\n%s", logs.String())
	}
}
