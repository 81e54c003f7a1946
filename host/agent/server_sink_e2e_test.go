package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/host/agent"
	"github.com/vigil-hids/vigil/host/config"
	"github.com/vigil-hids/vigil/host/logging"
	"github.com/vigil-hids/vigil/host/sink"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server"
	"github.com/vigil-hids/vigil/server/pki"
)

// TestServerSinkEventsReachTheServer runs a real host with sinks.server and
// a flooding testplugin against a real vigil-server (mutual TLS, a host
// certificate naming the host): the plugin's events arrive in the server's
// events file, stamped with the host name, as they do in the local file.
func TestServerSinkEventsReachTheServer(t *testing.T) {
	etcd := etcdtest.StartEmbedded(t)
	dir := t.TempDir()
	pd := filepath.Join(dir, "pki")
	ids := append(append([]pki.Identity{}, pki.DefaultIdentities...), pki.Identity{Name: "e2e-host", Role: "host", File: "e2e-host"})
	if _, err := pki.Init(pd, pki.Options{Identities: ids}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	data := filepath.Join(dir, "data")
	srv, err := server.Start(ctx, server.Config{
		ID: "sink-e2e", Listen: "127.0.0.1:0", DataDir: data, EtcdEndpoints: etcd.Endpoints(),
		TLS:         pki.Files{CA: filepath.Join(pd, "ca.crt"), Cert: filepath.Join(pd, "server.crt"), Key: filepath.Join(pd, "server.key")},
		CheckPlugin: catalog.Validate,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)

	cfg := hostConfig(t, testplugin("tp-srv", map[string]any{"flood_total": 1000, "flood_rate": 0}))
	cfg.Server = &config.Server{URL: "https://" + srv.Addr(), CAFile: filepath.Join(pd, "ca.crt"),
		CertFile: filepath.Join(pd, "e2e-host.crt"), KeyFile: filepath.Join(pd, "e2e-host.key")}
	cfg.Sinks.Server = &sink.ServerConfig{FlushInterval: 50 * time.Millisecond}
	a := start(t, cfg)
	count := func(path string) (n int) {
		for _, l := range readEvents(t, path) {
			if l.Plugin == "tp-srv" && l.Type == "flood" {
				n++
			}
		}
		return n
	}
	events := filepath.Join(data, "events", "events.ndjson")
	waitLong(t, "1000 events in the server's file", func() bool { return count(events) >= 1000 })
	// vigil-host status shows the sink's counts; what it took is
	// delivered, pending or lost, to the event.
	waitLong(t, "the server sink's counts in the status", func() bool {
		c, ok := a.Snapshot().SinkCounts["server"]
		return ok && c.Delivered >= 1000
	})
	if c := a.Snapshot().SinkCounts["server"]; c.Accepted != c.Delivered+c.Pending+sumLost(c.Lost) || len(c.Lost) != 0 {
		t.Errorf("server sink counts %+v", c)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if n, local := count(events), count(cfg.Sinks.File.Path); n != 1000 || local != 1000 {
		t.Fatalf("server has %d flood events, the local file %d, want 1000 each", n, local)
	}
	hosts := map[string]int{}
	for _, l := range readHosts(t, events) {
		hosts[l]++
	}
	if len(hosts) != 1 || hosts["e2e-host"] == 0 {
		t.Fatalf("hosts in the server's file: %v", hosts)
	}
}

// readHosts returns the "host" of every line of an NDJSON file.
func readHosts(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var v struct {
			Host string `json:"host"`
		}
		if err := json.Unmarshal(l, &v); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		out = append(out, v.Host)
	}
	return out
}

func sumLost(m map[string]uint64) (n uint64) {
	for _, v := range m {
		n += v
	}
	return n
}

// TestFailedStartClosesSinks: a start that fails after a network sink was
// built (here the server sink's client certificate is missing, after the
// Kafka sink) closes that sink; TestMain's leak check fails on the Kafka
// client's goroutines otherwise.
func TestFailedStartClosesSinks(t *testing.T) {
	cfg := hostConfig(t, testplugin("tp-fail", nil))
	cfg.Sinks.Kafka = &sink.KafkaConfig{Brokers: []string{"127.0.0.1:1"}, Topic: "vigil-events"}
	missing := t.TempDir()
	cfg.Server = &config.Server{URL: "https://127.0.0.1:1", CAFile: filepath.Join(missing, "no-such-ca.crt"),
		CertFile: filepath.Join(missing, "host.crt"), KeyFile: filepath.Join(missing, "host.key")}
	cfg.Sinks.Server = &sink.ServerConfig{}
	log, err := logging.New(cfg.Log)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	a, err := agent.Start(context.Background(), cfg, agent.Options{Version: "test", Log: log.Logger, PluginLog: logging.HCLog(log.Logger, "")})
	if err == nil {
		a.Close()
		t.Fatal("the agent started with a missing CA file")
	}
	if !strings.Contains(err.Error(), "no-such-ca.crt") {
		t.Errorf("error %q does not name the missing file", err)
	}
}
