package agent_test

// End-to-end tests: real plugin binaries built from this repository, run by
// the real host (agent, supervisor, go-plugin, pipeline, NDJSON sink).

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/agent"
	"github.com/vigil-hids/vigil/host/config"
	"github.com/vigil-hids/vigil/host/logging"
	"github.com/vigil-hids/vigil/host/pipeline"
	"github.com/vigil-hids/vigil/host/status"
	"github.com/vigil-hids/vigil/host/supervisor"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vigil-e2e-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", dir+"/",
		"../../plugins/testplugin/cmd/vigil-testplugin",
		"../../plugins/testplugin/cmd/badcookie",
		"../../plugins/testplugin/cmd/garbage",
		"../../plugins/testplugin/cmd/oldapi",
		"../../cmd/vigil-host",
	)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building test binaries: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	removeTestCgroupParent()
	os.RemoveAll(dir)
	// An agent that stops leaves nothing running behind it: no goroutine
	// of its supervisor, breakers, pipeline, control loop or sinks.
	if code == 0 {
		if err := goleak.Find(
			// Process-wide singletons started by etcd's and grpc's packages.
			goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
			goleak.IgnoreAnyFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
			// lumberjack v2.2.1 starts one idle goroutine per Logger that its
			// Close does not stop (natefinch/lumberjack#56, #205, unfixed):
			// vigil-host makes two per process (log file, file sink), the
			// tests one per agent they run.
			goleak.IgnoreTopFunction("gopkg.in/natefinch/lumberjack%2ev2.(*Logger).millRun"),
		); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left running after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// hostConfig returns a config with fast supervision for tests, writing
// events and the socket under t's temp dir.
func hostConfig(t testing.TB, plugins ...config.Plugin) config.Config {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.HostName = "e2e-host"
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.RunDir = filepath.Join(dir, "run")
	cfg.Log = logging.Config{Level: "debug", File: filepath.Join(dir, "host.log")}
	cfg.Sinks.File.Path = filepath.Join(dir, "events.ndjson")
	cfg.Supervisor.CallTimeout = 2 * time.Second
	cfg.Supervisor.ShutdownTimeout = time.Second
	cfg.Supervisor.BackoffInitial = 20 * time.Millisecond
	cfg.Supervisor.BackoffMax = 200 * time.Millisecond
	cfg.Supervisor.YoungAge = 5 * time.Second
	cfg.Supervisor.QuarantineAfter = 4
	cfg.Governance.CgroupParent = testCgroupParent
	cfg.Plugins = plugins
	return cfg
}

func testplugin(name string, conf map[string]any) config.Plugin {
	return config.Plugin{Name: name, Path: filepath.Join(binDir, "vigil-testplugin"), Config: conf}
}

func start(t testing.TB, cfg config.Config) *agent.Agent {
	t.Helper()
	log, err := logging.New(cfg.Log)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.Start(context.Background(), cfg, agent.Options{
		Version: "test", Log: log.Logger, PluginLog: logging.HCLog(log.Logger, ""), SetLogLevel: log.SetLevel,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Close()
		log.Close()
	})
	return a
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pluginStatus(a *agent.Agent, name string) supervisor.Status {
	if p := a.Supervisor().Plugin(name); p != nil {
		return p.Status()
	}
	return supervisor.Status{}
}

func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	// A zombie still answers kill(0); look at its state instead.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}

type line struct {
	Plugin string         `json:"plugin"`
	Type   string         `json:"type"`
	Alert  bool           `json:"alert"`
	Fields map[string]any `json:"fields"`
}

func readEvents(t *testing.T, path string) []line {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		t.Fatal(err)
	}
	defer f.Close()
	var out []line
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("events file has a line that is not JSON: %v: %q", err, sc.Text())
		}
		out = append(out, l)
	}
	return out
}

func TestPluginRunsAndEventsReachTheFile(t *testing.T) {
	cfg := hostConfig(t, testplugin("tp-main", map[string]any{"flood_total": 1000, "flood_rate": 0, "alert_every": 10}))
	a := start(t, cfg)
	waitFor(t, "1000 events delivered", func() bool {
		for _, p := range a.Snapshot().Plugins {
			if p.Name == "tp-main" && p.Delivered >= 1001 {
				return true
			}
		}
		return false
	})
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	var flood, alerts int
	for _, l := range readEvents(t, cfg.Sinks.File.Path) {
		if l.Plugin == "tp-main" && l.Type == "flood" {
			flood++
			if l.Alert {
				alerts++
			}
		}
	}
	if flood != 1000 || alerts != 100 {
		t.Fatalf("events file has %d flood events (%d alerts), want 1000 (100 alerts)", flood, alerts)
	}
}

func TestCrashRestartsWithBackoffThenQuarantines(t *testing.T) {
	cfg := hostConfig(t,
		testplugin("tp-crashy", map[string]any{"exit_after": "100ms"}),
		testplugin("tp-steady", nil),
	)
	a := start(t, cfg)
	waitFor(t, "crashy quarantined", func() bool { return pluginStatus(a, "tp-crashy").State == supervisor.StateQuarantined })
	st := pluginStatus(a, "tp-crashy")
	if st.Restarts != cfg.Supervisor.QuarantineAfter {
		t.Errorf("restarts = %d, want %d", st.Restarts, cfg.Supervisor.QuarantineAfter)
	}
	if !strings.Contains(st.LastError, "quarantined after 4 starts") || !strings.Contains(st.LastError, "plugin died after") {
		t.Errorf("last error does not explain the quarantine: %q", st.LastError)
	}
	if s := pluginStatus(a, "tp-steady"); s.State != supervisor.StateRunning || s.Restarts != 0 {
		t.Errorf("the other plugin was disturbed: %+v", s)
	}
	// A new spec lifts the quarantine.
	if err := a.Apply(context.Background(), 7, api.DesiredState{Plugins: map[string]api.PluginState{
		"tp-crashy": {Config: json.RawMessage(`{"exit_after":"0s"}`)},
	}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "crashy running again", func() bool { return pluginStatus(a, "tp-crashy").State == supervisor.StateRunning })
}

func TestShutdownKillsPluginAndItsChildren(t *testing.T) {
	cfg := hostConfig(t, testplugin("tp-hangs", map[string]any{"spawn_child": true, "hang_shutdown": true}))
	a := start(t, cfg)
	var child int
	waitFor(t, "child_spawned event", func() bool {
		for _, l := range readEvents(t, cfg.Sinks.File.Path) {
			if l.Type == "child_spawned" {
				child = int(l.Fields["pid"].(float64))
				return true
			}
		}
		return false
	})
	pid := pluginStatus(a, "tp-hangs").PID
	if !alive(pid) || !alive(child) {
		t.Fatalf("plugin %d or child %d not running", pid, child)
	}
	a.Close()
	if alive(pid) || alive(child) {
		t.Fatalf("after Close: plugin alive=%v child alive=%v", alive(pid), alive(child))
	}
}

func TestHostKilledWithSIGKILLLeavesNoPlugin(t *testing.T) {
	cfg := hostConfig(t, testplugin("tp-orphan", nil))
	cfg.Log.File = ""
	cfg.Log.Stderr = true
	path := filepath.Join(t.TempDir(), "host.yaml")
	b, _ := json.Marshal(map[string]any{
		"host_name": cfg.HostName, "state_dir": cfg.StateDir, "run_dir": cfg.RunDir,
		"sinks":      map[string]any{"file": map[string]any{"path": cfg.Sinks.File.Path}},
		"governance": map[string]any{"cgroup_parent": testCgroupParent},
		"plugins":    []map[string]any{{"name": "tp-orphan", "path": filepath.Join(binDir, "vigil-testplugin")}},
	})
	if err := os.WriteFile(path, b, 0o600); err != nil { // JSON is YAML
		t.Fatal(err)
	}
	host := exec.Command(filepath.Join(binDir, "vigil-host"), "run", "-c", path)
	var stderr strings.Builder
	host.Stderr = &stderr
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("vigil-host stderr:\n%s", stderr.String())
		}
	})
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	defer host.Process.Kill()
	sock := filepath.Join(cfg.RunDir, "host.sock")
	var pid int
	waitFor(t, "plugin running under the host", func() bool {
		snap, err := status.Fetch(context.Background(), sock)
		if err != nil || len(snap.Plugins) != 1 {
			return false
		}
		pid = snap.Plugins[0].PID
		return snap.Plugins[0].State == "running" && pid > 0
	})
	if err := host.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = host.Wait()
	waitFor(t, fmt.Sprintf("plugin %d to die with its host", pid), func() bool { return !alive(pid) })
}

func TestInvalidConfigIsRejectedAndPreviousKept(t *testing.T) {
	cfg := hostConfig(t,
		testplugin("tp-bad", map[string]any{"spin_threads": 0}),
		testplugin("tp-good", map[string]any{"flood_total": 5}),
		testplugin("tp-typo", map[string]any{"flod_rate": 5}),
	)
	a := start(t, cfg)
	waitFor(t, "bad and typo failed", func() bool {
		return pluginStatus(a, "tp-bad").State == supervisor.StateFailed && pluginStatus(a, "tp-typo").State == supervisor.StateFailed
	})
	if got := pluginStatus(a, "tp-bad").LastError; !strings.Contains(got, "tp-bad.spin_threads must be between 1 and 64 (got 0)") {
		t.Errorf("bad: last error %q does not name the key, range and value", got)
	}
	if got := pluginStatus(a, "tp-typo").LastError; !strings.Contains(got, `unknown key "flod_rate"`) {
		t.Errorf("typo: last error %q does not name the unknown key", got)
	}
	waitFor(t, "good running", func() bool { return pluginStatus(a, "tp-good").State == supervisor.StateRunning })
	pid := pluginStatus(a, "tp-good").PID

	// A bad config for a running plugin: refused, the plugin keeps running
	// with its previous config, and the refusal is reported.
	if err := a.Apply(context.Background(), 3, api.DesiredState{Plugins: map[string]api.PluginState{
		"tp-good": {Config: json.RawMessage(`{"alloc_mb": -5}`)},
	}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "config error reported", func() bool { return pluginStatus(a, "tp-good").ConfigError != "" })
	st := pluginStatus(a, "tp-good")
	if !strings.Contains(st.ConfigError, "tp-good.alloc_mb must be between 0 and 65536 (got -5)") {
		t.Errorf("config error %q does not name the key, range and value", st.ConfigError)
	}
	if st.State != supervisor.StateRunning || st.PID != pid {
		t.Errorf("plugin did not keep running on its previous config: %+v (pid was %d)", st, pid)
	}
	if got := a.Status()["tp-good"].LastError; !strings.Contains(got, "config rejected") {
		t.Errorf("registration status does not report the refusal: %q", got)
	}
	// The fix is applied live, without a restart.
	if err := a.Apply(context.Background(), 4, api.DesiredState{Plugins: map[string]api.PluginState{
		"tp-good": {Config: json.RawMessage(`{"alloc_mb": 1}`)},
	}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "config error cleared", func() bool { return pluginStatus(a, "tp-good").ConfigError == "" })
	if st := pluginStatus(a, "tp-good"); st.PID != pid || st.Restarts != 0 {
		t.Errorf("reconfigure restarted the plugin: %+v", st)
	}
	// A desired state for a plugin this host has no binary for is refused
	// by name.
	err := a.Apply(context.Background(), 5, api.DesiredState{Plugins: map[string]api.PluginState{"nosuch": {}}})
	if err == nil || !strings.Contains(err.Error(), `plugin "nosuch": this host has no binary for it`) {
		t.Errorf("Apply of an unknown plugin: %v", err)
	}
}

func TestBadPluginsAreRefusedClearlyAndOthersRunOn(t *testing.T) {
	cfg := hostConfig(t,
		config.Plugin{Name: "missing", Path: filepath.Join(binDir, "no-such-binary")},
		config.Plugin{Name: "garbage", Path: filepath.Join(binDir, "garbage")},
		config.Plugin{Name: "cookie", Path: filepath.Join(binDir, "badcookie")},
		config.Plugin{Name: "oldapi", Path: filepath.Join(binDir, "oldapi")},
		config.Plugin{Name: "wrongname", Path: filepath.Join(binDir, "vigil-testplugin")},
		testplugin("tp-panics", map[string]any{"panic_at_start": true}),
		testplugin("tp-hangcfg", map[string]any{"hang_configure": true}),
		testplugin("tp-fine", nil),
	)
	// Short enough for tp-hangcfg to fail fast, long enough that tp-fine's
	// Info and Configure answer in time on a loaded box (its restart
	// count is asserted below).
	cfg.Supervisor.CallTimeout = time.Second
	// The testplugin binary answers to names starting "tp-" (see its Info),
	// so "wrongname" is a binary serving another plugin.
	a := start(t, cfg)
	want := map[string]string{
		"missing":    "no-such-binary: no such file or directory",
		"garbage":    "is not a Vigil plugin: it printed",
		"cookie":     "is not a Vigil plugin: its handshake cookie does not match",
		"oldapi":     "Plugin version: 99, Client versions: [1]",
		"wrongname":  `serves plugin "testplugin", but the config names it "wrongname"`,
		"tp-panics":  "panic in Run",
		"tp-hangcfg": "configure: no answer within 1s",
	}
	for name, msg := range want {
		waitFor(t, name+" refused", func() bool {
			st := pluginStatus(a, name)
			return (st.State == supervisor.StateFailed || st.State == supervisor.StateQuarantined) && strings.Contains(st.LastError, msg)
		})
	}
	waitFor(t, "tp-fine running", func() bool { return pluginStatus(a, "tp-fine").State == supervisor.StateRunning })
	if st := pluginStatus(a, "tp-fine"); st.Restarts != 0 || st.LastError != "" {
		t.Errorf("a healthy plugin was disturbed by its neighbours: %+v", st)
	}
}

func TestFloodIsLimitedWithExactAccounting(t *testing.T) {
	cfg := hostConfig(t, testplugin("tp-flood", map[string]any{"flood_total": 200000, "flood_rate": 0, "alert_every": 1000}))
	cfg.Pipeline.Plugins = map[string]pipeline.Limits{"tp-flood": {QueueSize: 4096, Rate: 20000, Burst: 20000}}
	a := start(t, cfg)
	var st status.Plugin
	waitFor(t, "flood finished and drained", func() bool {
		for _, p := range a.Snapshot().Plugins {
			if p.Name == "tp-flood" {
				st = p
			}
		}
		var dropped uint64
		for _, n := range st.Dropped {
			dropped += n
		}
		return st.Emitted == 200001 && st.Queued == 0 && st.Delivered+dropped == st.Emitted
	})
	if st.Dropped["rate_limited"] == 0 {
		t.Errorf("a flood of 200000 events at a 20000/s limit dropped nothing for rate: %+v", st.Dropped)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	var lines, alerts uint64
	for _, l := range readEvents(t, cfg.Sinks.File.Path) {
		if l.Plugin == "tp-flood" {
			lines++
			if l.Alert {
				alerts++
			}
		}
	}
	if lines != st.Delivered {
		t.Errorf("events file has %d lines of tp-flood, the host counted %d delivered", lines, st.Delivered)
	}
	// Alerts are not charged to the telemetry rate limit: all 200 arrive.
	if alerts != 200 {
		t.Errorf("alerts delivered = %d, want all 200", alerts)
	}
}

func TestHeartbeatReportsHostAndPlugins(t *testing.T) {
	cfg := hostConfig(t, testplugin("tp-beat", map[string]any{"emit_counter": "widgets", "emit_counter_value": 42}))
	cfg.Heartbeat.Interval = time.Second
	a := start(t, cfg)
	waitFor(t, "a heartbeat with the plugin's status", func() bool {
		var host, plug bool
		for _, l := range readEvents(t, cfg.Sinks.File.Path) {
			if l.Plugin == "host" && l.Type == "heartbeat" && l.Fields["rss_bytes"].(float64) > 0 {
				host = true
			}
			if l.Plugin == "host" && l.Type == "plugin_status" && l.Fields["plugin"] == "tp-beat" &&
				l.Fields["state"] == "running" && l.Fields["counter_widgets"] == float64(42) {
				plug = true
			}
		}
		return host && plug
	})
	_ = a
}
