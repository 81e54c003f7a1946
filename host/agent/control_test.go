package agent_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/control"
	"github.com/vigil-hids/vigil/host/supervisor"
	"github.com/vigil-hids/vigil/internal/etcdtest"
)

// putScope writes a desired-state document the way the server does (the
// server's own path, with history and validation, is tested in server/).
func putScope(t *testing.T, cli *clientv3.Client, s api.Scope, ds api.DesiredState) int64 {
	t.Helper()
	b, err := json.Marshal(api.Document{Scope: s.String(), Author: "test", Time: time.Now(), State: ds})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Put(context.Background(), api.NewKeyspace("").ScopeKey(s), string(b))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func registration(t *testing.T, cli *clientv3.Client, host string) api.Registration {
	t.Helper()
	resp, err := cli.Get(context.Background(), api.NewKeyspace("").Agent(host))
	if err != nil {
		t.Fatal(err)
	}
	var r api.Registration
	if len(resp.Kvs) == 1 {
		if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// TestFleetControlsTheRealHost drives a real host with real plugin
// processes through etcd: config push, emergency stop and resume, each
// acknowledged in the registration; then a restart while etcd is down
// brings the plugins back from the persisted state.
func TestFleetControlsTheRealHost(t *testing.T) {
	etcd := etcdtest.StartEmbedded(t)
	cli := etcd.Client(t)
	cfg := hostConfig(t, testplugin("tp-ctl", nil))
	cfg.Labels = map[string]string{"env": "test"}
	cc := control.Default()
	cc.Endpoints = etcd.Endpoints()
	cc.LeaseTTL = 5 * time.Second
	cfg.Control = &cc
	a := start(t, cfg)
	host := cfg.HostName

	waitFor(t, "registration", func() bool { return registration(t, cli, host).Host == host })
	waitFor(t, "plugin running", func() bool { return pluginStatus(a, "tp-ctl").State == supervisor.StateRunning })
	pid := pluginStatus(a, "tp-ctl").PID

	// A config for the group reaches the running plugin without a restart.
	rev := putScope(t, cli, api.Scope{Kind: api.ScopeGroup, Label: "env", Value: "test"}, api.DesiredState{
		Plugins: map[string]api.PluginState{"tp-ctl": {Config: json.RawMessage(`{"emit_counter":"from_fleet","emit_counter_value":7}`)}},
	})
	waitFor(t, "group config acknowledged", func() bool { return registration(t, cli, host).Applied.Revision >= rev })
	if st := pluginStatus(a, "tp-ctl"); st.PID != pid || st.ConfigError != "" {
		t.Fatalf("config push restarted or was refused: %+v", st)
	}

	// The emergency stop holds every plugin; the host stays registered.
	stop := true
	rev = putScope(t, cli, api.Scope{Kind: api.ScopeFleet}, api.DesiredState{Stop: &stop})
	waitFor(t, "stop acknowledged", func() bool {
		r := registration(t, cli, host)
		return r.Applied.Revision >= rev && r.Stopped
	})
	waitFor(t, "plugin held", func() bool {
		st := pluginStatus(a, "tp-ctl")
		return st.State == supervisor.StateHeld && st.Held == "emergency stop"
	})
	if alive(pid) {
		t.Fatalf("plugin %d still running under the emergency stop", pid)
	}

	// The host's log level follows the fleet; a bad one is refused by name.
	rev = putScope(t, cli, api.Scope{Kind: api.ScopeFleet}, api.DesiredState{Stop: &stop, LogLevel: "loud"})
	waitFor(t, "bad log level refused", func() bool {
		r := registration(t, cli, host)
		return r.Applied.Revision >= rev && strings.Contains(r.Applied.Error, "log_level")
	})

	// A refused config is reported in the registration, by plugin name.
	rev = putScope(t, cli, api.Scope{Kind: api.ScopeHost, Host: host}, api.DesiredState{
		Plugins: map[string]api.PluginState{"nosuch": {}},
	})
	waitFor(t, "rejection reported", func() bool {
		r := registration(t, cli, host)
		return r.Applied.Revision >= rev && r.Applied.Error != ""
	})

	// Resume.
	resume := false
	rev = putScope(t, cli, api.Scope{Kind: api.ScopeFleet}, api.DesiredState{Stop: &resume})
	waitFor(t, "resume acknowledged and plugin running", func() bool {
		r := registration(t, cli, host)
		return r.Applied.Revision >= rev && !r.Stopped && pluginStatus(a, "tp-ctl").State == supervisor.StateRunning
	})

	// Stop the host, then etcd; a new host process on the same state dir
	// starts its plugins from the persisted desired state.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	etcd.Close()
	b := start(t, cfg)
	waitFor(t, "plugin running from the persisted state", func() bool {
		return pluginStatus(b, "tp-ctl").State == supervisor.StateRunning
	})
	if got := b.Snapshot().Control["from_disk"]; got != true {
		t.Errorf("control status from_disk = %v, want true", got)
	}
}
