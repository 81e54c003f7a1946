package testplugin_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/vigil-hids/vigil/plugins/testplugin"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/sdktest"
)

func TestInfo(t *testing.T) {
	h := sdktest.New(t, testplugin.New)
	info := h.Info()
	if info.Name != testplugin.Name || info.Version != testplugin.Version {
		t.Errorf("Info = %s %s, want %s %s", info.Name, info.Version, testplugin.Name, testplugin.Version)
	}
	if len(info.Capabilities) != 1 || info.Capabilities[0] != "task" {
		t.Errorf("capabilities = %v, want [task]", info.Capabilities)
	}
	var defaults testplugin.Config
	if err := json.Unmarshal(info.ConfigDefaults, &defaults); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if defaults != *testplugin.DefaultConfig() {
		t.Errorf("defaults over the wire = %+v, want %+v", defaults, *testplugin.DefaultConfig())
	}
}

func TestConfigureRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name   string
		config string
		want   string
	}{
		{"percent above 100", `{"spin_cpu_percent": 150}`, "testplugin.spin_cpu_percent must be between 0 and 100 (got 150)"},
		{"unknown key", `{"spin_cpu": 10}`, `unknown key "spin_cpu"`},
		{"alloc above its cap", `{"alloc_mb": 5000}`, "testplugin.alloc_mb must be at most alloc_max_mb, 4096 (got 5000)"},
		{"flood total below -1", `{"flood_total": -2}`, "testplugin.flood_total must be at least -1 (got -2)"},
		{"duration of the wrong type", `{"panic_after": true}`, `key "panic_after" must be a duration such as "5s" (got true)`},
	}
	h := sdktest.New(t, testplugin.New)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := h.Configure(tt.config)
			var rerr *sdktest.RPCError
			if !errors.As(err, &rerr) || rerr.Code != codes.InvalidArgument {
				t.Fatalf("Configure(%s) = %v, want an InvalidArgument refusal", tt.config, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Configure(%s) = %q, want it to say %q", tt.config, err, tt.want)
			}
		})
	}
	// A refused config leaves the previous one in force.
	if err := h.Configure(`{"exit_code": 7}`); err != nil {
		t.Fatal(err)
	}
	if err := h.Configure(`{"exit_code": 700}`); err == nil {
		t.Fatal("exit_code 700 accepted")
	}
	got, err := h.Task("config", nil)
	if err != nil {
		t.Fatal(err)
	}
	var cfg testplugin.Config
	if err := json.Unmarshal(got, &cfg); err != nil || cfg.ExitCode != 7 {
		t.Errorf("config after a refused change = %s (%v), want exit_code 7", got, err)
	}
}

// TestFloodIsAccountedFor is the promise the host builds on: every event
// the plugin emits is either received or counted as dropped.
func TestFloodIsAccountedFor(t *testing.T) {
	tests := []struct {
		name      string
		batch     sdk.BatchOptions
		config    string
		total     int
		wantDrops bool
	}{
		{
			name:   "fast flood with alerts, default batching",
			config: `{"flood_total": 20000, "alert_every": 100}`,
			total:  20000,
		},
		{
			name:   "paced flood",
			config: `{"flood_total": 300, "flood_rate": 3000, "alert_every": 7}`,
			total:  300,
		},
		{
			name:      "tiny buffer drops and counts",
			batch:     sdk.BatchOptions{MaxEvents: 8, Pending: 1},
			config:    `{"flood_total": 50000, "alert_every": 1000}`,
			total:     50000,
			wantDrops: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := sdktest.New(t, testplugin.New, sdktest.WithBatch(tt.batch), sdktest.WithLogLevel("info"))
			if err := h.Configure(tt.config); err != nil {
				t.Fatal(err)
			}
			h.Start()
			want := uint64(tt.total) + 1 // the flood and the "started" event
			h.Settle(want, 60*time.Second)
			if got := h.Emitted(); got != want {
				t.Errorf("emitted %d, want %d", got, want)
			}
			if got := uint64(h.Received()) + h.Dropped(); got != h.Emitted() {
				t.Errorf("received %d + dropped %d != emitted %d", h.Received(), h.Dropped(), h.Emitted())
			}
			if tt.wantDrops {
				if d := h.DroppedBy()[sdk.DropBufferFull]; d == 0 {
					t.Errorf("no drops under reason %s with a one-batch buffer", sdk.DropBufferFull)
				}
			} else if h.Dropped() != 0 {
				t.Errorf("dropped %d", h.Dropped())
			}
			seen := map[int64]bool{}
			for _, e := range h.Events() {
				if e.Type != "flood" {
					continue
				}
				n := e.Int("n")
				if seen[n] {
					t.Fatalf("event n=%d received twice", n)
				}
				seen[n] = true
				isAlert := strings.Contains(tt.config, "alert_every") && n%alertEvery(t, tt.config) == 0
				if e.Alert != isAlert || e.Bool("alert") != isAlert {
					t.Fatalf("event %s: alert %t, want %t", e, e.Alert, isAlert)
				}
				if isAlert && e.Severity != sdk.SevWarning {
					t.Fatalf("alert %s has severity %s", e, e.Severity)
				}
			}
			if err := h.Stop(); err != nil {
				t.Errorf("Stop: %v", err)
			}
		})
	}
}

func alertEvery(t *testing.T, config string) int64 {
	var c struct {
		AlertEvery int64 `json:"alert_every"`
	}
	if err := json.Unmarshal([]byte(config), &c); err != nil {
		t.Fatal(err)
	}
	return c.AlertEvery
}

// TestStopFlushesEndlessFlood checks that Stop, which calls Shutdown as
// the host does, still accounts for every event of a flood that never
// ends by itself.
func TestStopFlushesEndlessFlood(t *testing.T) {
	h := sdktest.New(t, testplugin.New, sdktest.WithLogLevel("info"))
	if err := h.Configure(`{"flood_total": -1, "flood_rate": 20000}`); err != nil {
		t.Fatal(err)
	}
	h.Start()
	h.WaitEvents(sdktest.OfType("flood"), 1000, 10*time.Second)
	if err := h.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if got := uint64(h.Received()) + h.Dropped(); got != h.Emitted() {
		t.Errorf("after Stop: received %d + dropped %d != emitted %d", h.Received(), h.Dropped(), h.Emitted())
	}
}

func TestStartedEventAndCounter(t *testing.T) {
	h := sdktest.New(t, testplugin.New)
	if err := h.Configure(`{"emit_counter": "widgets_total", "emit_counter_value": 42}`); err != nil {
		t.Fatal(err)
	}
	h.Start()
	ev := h.WaitEvents(sdktest.OfType("started"), 1, 5*time.Second)[0]
	if ev.Int("pid") != int64(syscall.Getpid()) || ev.Alert {
		t.Errorf("started event = %s, want pid %d and no alert", ev, syscall.Getpid())
	}
	if ev.Time.IsZero() || time.Since(ev.Time) > time.Minute {
		t.Errorf("started event time %v is not the coarse clock's now", ev.Time)
	}
	h.WaitFor("counter widgets_total", 5*time.Second, func() bool { return h.Counters()["widgets_total"] == 42 })
}

func TestPanicAtStartEndsRun(t *testing.T) {
	h := sdktest.New(t, testplugin.New)
	if err := h.Configure(`{"panic_at_start": true}`); err != nil {
		t.Fatal(err)
	}
	h.Start()
	select {
	case <-h.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not end after a panic")
	}
	var rerr *sdktest.RPCError
	if err := h.RunErr(); !errors.As(err, &rerr) || rerr.Code != codes.Aborted || !strings.Contains(rerr.Msg, "panic_at_start") {
		t.Errorf("Run ended with %v, want Aborted naming the panic", err)
	}
}

func TestSpawnChildLeavesChildRunning(t *testing.T) {
	h := sdktest.New(t, testplugin.New)
	if err := h.Configure(`{"spawn_child": true}`); err != nil {
		t.Fatal(err)
	}
	h.Start()
	ev := h.WaitEvents(sdktest.OfType("child_spawned"), 1, 5*time.Second)[0]
	pid := int(ev.Int("pid"))
	if pid <= 0 {
		t.Fatalf("child_spawned event %s has no pid", ev)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Errorf("child %d is gone after the plugin stopped (%v); the host's kill test needs it left running", pid, err)
	}
}

func TestTasks(t *testing.T) {
	h := sdktest.New(t, testplugin.New)
	tests := []struct {
		name    string
		task    string
		args    any
		want    string
		wantErr string
	}{
		{name: "echo", task: "echo", args: `{"a":1}`, want: `{"a":1}`},
		{name: "fail", task: "fail", wantErr: "testplugin: task fail (sdktest-2): failing as asked"},
		{name: "unknown", task: "nope", wantErr: `unknown task "nope" (known: config, echo, fail)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := h.Task(tt.task, tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Task(%s) error = %v, want %q", tt.task, err, tt.wantErr)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Errorf("Task(%s) = %s, %v, want %s", tt.task, got, err, tt.want)
			}
		})
	}
}

func TestHangConfigureIgnoresDeadline(t *testing.T) {
	h := sdktest.New(t, testplugin.New)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := h.ConfigureContext(ctx, `{"hang_configure": true}`)
	var rerr *sdktest.RPCError
	if !errors.As(err, &rerr) || rerr.Code != codes.DeadlineExceeded {
		t.Errorf("Configure with hang_configure = %v, want DeadlineExceeded", err)
	}
}
