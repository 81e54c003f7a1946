package agent_test

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/pipeline"
	"github.com/vigil-hids/vigil/host/supervisor"
)

type pipelineLimits = pipeline.Limits

func itoa(n int) string { return strconv.Itoa(n) }

// Governance end to end: real plugin processes in real cgroups (v1 on this
// machine), tripped by the real governor.

func TestCPUHogIsCappedAndTrips(t *testing.T) {
	cfg := hostConfig(t,
		testplugin("tp-hog", map[string]any{"spin_cpu_percent": 100, "spin_threads": 2}),
		testplugin("tp-calm", nil),
	)
	cfg.Governance.Interval = 250 * time.Millisecond
	cfg.Governance.AgentCPUPercent = 400 // this test is about the plugin's own breaker
	cfg.Governance.Plugins = map[string]map[string]any{
		"tp-hog": {"cpu_percent": 10, "quota_cpu_percent": 20, "samples": 4, "cooldown": "1h", "max_cooldown": "2h"},
	}
	a := start(t, cfg)
	waitFor(t, "the hog's breaker to open on cpu", func() bool {
		st := pluginStatus(a, "tp-hog")
		return st.State == supervisor.StateHeld && strings.Contains(st.Held, "open: cpu")
	})
	snap := a.Snapshot()
	for _, p := range snap.Plugins {
		switch p.Name {
		case "tp-hog":
			if !strings.HasPrefix(p.Breaker, "open: cpu") {
				t.Errorf("status breaker = %q", p.Breaker)
			}
		case "tp-calm":
			if p.State != "running" || p.Restarts != 0 {
				t.Errorf("the calm plugin was disturbed: %+v", p)
			}
		}
	}
	if got := a.Status()["tp-hog"].Breaker; !strings.HasPrefix(got, "open: cpu") {
		t.Errorf("registration status breaker = %q", got)
	}
}

func TestMemoryHogIsKilledInItsCgroupAndRecovers(t *testing.T) {
	cfg := hostConfig(t,
		testplugin("tp-mem", map[string]any{"alloc_mb_per_sec": 256, "alloc_max_mb": 1024}),
		testplugin("tp-calm", nil),
	)
	cfg.Governance.Interval = 250 * time.Millisecond
	cfg.Governance.AgentCPUPercent = 400
	cfg.Governance.Plugins = map[string]map[string]any{
		"tp-mem": {"cpu_percent": 200, "quota_cpu_percent": 400, "memory_bytes": 64 << 20, "quota_memory_bytes": 64 << 20, "cooldown": "1s", "healthy_window": "1h"},
	}
	a := start(t, cfg)
	waitFor(t, "an OOM kill inside the plugin's cgroup to trip its breaker", func() bool {
		return strings.Contains(a.Status()["tp-mem"].Breaker, "oom_kill")
	})
	if !alive(os.Getpid()) {
		t.Fatal("unreachable")
	}
	if st := pluginStatus(a, "tp-calm"); st.State != supervisor.StateRunning || st.Restarts != 0 {
		t.Errorf("the calm plugin was disturbed: %+v", st)
	}
	// After the cooldown the breaker lets it start again (half-open).
	waitFor(t, "the memory hog restarted after its cooldown", func() bool {
		st := pluginStatus(a, "tp-mem")
		return st.State == supervisor.StateRunning && st.Restarts >= 1
	})
}

func TestFloodIsRateLimitedThenTripped(t *testing.T) {
	cfg := hostConfig(t, testplugin("tp-flood", map[string]any{"flood_total": -1, "flood_rate": 20000}))
	cfg.Governance.Interval = 250 * time.Millisecond
	cfg.Governance.AgentCPUPercent = 400
	cfg.Governance.Plugins = map[string]map[string]any{"tp-flood": {"cpu_percent": 200, "quota_cpu_percent": 400, "cooldown": "1h", "max_cooldown": "2h"}}
	cfg.Pipeline.Plugins = map[string]pipelineLimits{"tp-flood": {Rate: 1000, Burst: 1000}}
	a := start(t, cfg)
	waitFor(t, "the flood to trip the breaker", func() bool {
		st := pluginStatus(a, "tp-flood")
		return st.State == supervisor.StateHeld && strings.Contains(st.Held, "open: event_flood")
	})
	var dropped uint64
	for _, p := range a.Snapshot().Plugins {
		if p.Name == "tp-flood" {
			dropped = p.Dropped["rate_limited"]
		}
	}
	if dropped == 0 {
		t.Error("the flood tripped the breaker without being rate limited first")
	}
}

func TestCgroupsAreRemovedOnExit(t *testing.T) {
	cfg := hostConfig(t, testplugin("tp-cg", nil))
	a := start(t, cfg)
	waitFor(t, "plugin running", func() bool { return pluginStatus(a, "tp-cg").State == supervisor.StateRunning })
	pid := pluginStatus(a, "tp-cg").PID
	b, err := os.ReadFile("/proc/" + itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) == 3 && strings.HasSuffix(parts[2], "/"+testCgroupParent+"/tp-cg") {
			ctl := parts[1]
			if ctl == "" {
				ctl = "unified"
			}
			if i := strings.IndexByte(ctl, ','); i > 0 {
				ctl = ctl[:i]
			}
			dirs = append(dirs, "/sys/fs/cgroup/"+ctl+parts[2])
		}
	}
	if len(dirs) == 0 {
		t.Fatalf("plugin %d is not in a %s/tp-cg cgroup:\n%s", pid, testCgroupParent, b)
	}
	a.Close()
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("cgroup %s left behind after the host stopped (%v)", d, err)
		}
	}
}

func TestAgentWideProtectionStopsAllAndRecovers(t *testing.T) {
	spin := map[string]any{"spin_cpu_percent": 30}
	cfg := hostConfig(t, testplugin("tp-a", spin), testplugin("tp-b", spin))
	cfg.Governance.Interval = 250 * time.Millisecond
	cfg.Governance.AgentCPUPercent = 20 // the two together use ~60% of a core
	lim := map[string]any{"cpu_percent": 200, "quota_cpu_percent": 400}
	cfg.Governance.Plugins = map[string]map[string]any{"tp-a": lim, "tp-b": lim}
	a := start(t, cfg)
	held := func(name string) bool {
		st := pluginStatus(a, name)
		return st.State == supervisor.StateHeld && strings.HasPrefix(st.Held, "agent-wide protection")
	}
	waitFor(t, "every plugin held by the agent-wide rule", func() bool { return held("tp-a") && held("tp-b") })
	// The host itself keeps running and answering.
	if snap := a.Snapshot(); snap.PID != os.Getpid() {
		t.Fatalf("snapshot from another process? %+v", snap)
	}
	// After the check window the plugins are let back in.
	waitFor(t, "plugins started again after the check window", func() bool {
		return pluginStatus(a, "tp-a").State == supervisor.StateRunning || pluginStatus(a, "tp-b").State == supervisor.StateRunning
	})
}

func TestLimitsFromTheDesiredStateReachTheBreaker(t *testing.T) {
	cfg := hostConfig(t, testplugin("tp-lim", map[string]any{"spin_cpu_percent": 50}))
	cfg.Governance.Interval = 250 * time.Millisecond
	cfg.Governance.AgentCPUPercent = 400
	// The file's limits let it spin; the fleet's do not.
	cfg.Governance.Plugins = map[string]map[string]any{"tp-lim": {"cpu_percent": 200, "quota_cpu_percent": 400}}
	a := start(t, cfg)
	waitFor(t, "plugin running", func() bool { return pluginStatus(a, "tp-lim").State == supervisor.StateRunning })
	bad := api.DesiredState{Plugins: map[string]api.PluginState{"tp-lim": {Limits: json.RawMessage(`{"cpu_percnt": 5}`)}}}
	if err := a.Apply(context.Background(), 2, bad); err == nil || !strings.Contains(err.Error(), "cpu_percnt") {
		t.Fatalf("Apply with a misspelt limit: %v", err)
	}
	tight := api.DesiredState{Plugins: map[string]api.PluginState{"tp-lim": {Limits: json.RawMessage(`{"cpu_percent": 10, "quota_cpu_percent": 100, "cooldown": "1h", "max_cooldown": "2h"}`)}}}
	if err := a.Apply(context.Background(), 3, tight); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the fleet's limit to trip the breaker", func() bool {
		return strings.HasPrefix(a.Status()["tp-lim"].Breaker, "open: cpu")
	})
}
