package example_test

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/vigil-hids/vigil/plugins/example"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/sdktest"
)

func procDir(t *testing.T, name string) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func config(t *testing.T, kv map[string]any) string {
	t.Helper()
	b, err := json.Marshal(kv)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestInfoPublishesDefaultsAndSchema(t *testing.T) {
	h := sdktest.New(t, example.New)
	info := h.Info()
	if info.Name != example.Name || info.Version != example.Version {
		t.Errorf("Info = %s %s", info.Name, info.Version)
	}
	if got, want := string(info.ConfigDefaults), `{"interval":"10s","alert_load_per_cpu":2,"proc_root":"/proc"}`; got != want {
		t.Errorf("defaults = %s, want %s", got, want)
	}
	var schema struct {
		Properties map[string]map[string]any `json:"properties"`
	}
	if err := json.Unmarshal(info.ConfigSchema, &schema); err != nil {
		t.Fatal(err)
	}
	iv := schema.Properties["interval"]
	if iv["x-minimum-duration"] != "1s" || iv["x-maximum-duration"] != "1h" {
		t.Errorf("schema of interval = %v, want its 1s..1h range", iv)
	}
}

func TestConfigureValidates(t *testing.T) {
	tests := []struct {
		name   string
		config string
		want   []string // empty: accepted
	}{
		{name: "empty keeps defaults", config: `{}`},
		{name: "interval only", config: `{"interval": "2s"}`},
		{name: "interval as seconds", config: `{"interval": 30}`},
		{name: "interval too short", config: `{"interval": "5ms"}`, want: []string{"example.interval must be between 1s and 1h (got 5ms)"}},
		{name: "interval too long", config: `{"interval": "2h"}`, want: []string{"example.interval must be between 1s and 1h (got 2h0m0s)"}},
		{name: "two problems at once", config: `{"alert_load_per_cpu": 0, "proc_root": "proc"}`, want: []string{
			"example.alert_load_per_cpu must be between 0.1 and 1000 (got 0)",
			`example.proc_root must be an absolute path (got "proc")`,
		}},
		{name: "unknown key", config: `{"intervall": "2s"}`, want: []string{`unknown key "intervall"`}},
		{name: "wrong type", config: `{"alert_load_per_cpu": "high"}`, want: []string{`key "alert_load_per_cpu" must be a number (got string)`}},
	}
	h := sdktest.New(t, example.New)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := h.Configure(tt.config)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Configure(%s) = %v", tt.config, err)
				}
				return
			}
			var rerr *sdktest.RPCError
			if !errors.As(err, &rerr) || rerr.Code != codes.InvalidArgument {
				t.Fatalf("Configure(%s) = %v, want InvalidArgument", tt.config, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Configure(%s) = %q, want it to say %q", tt.config, err, w)
				}
			}
		})
	}
}

func TestSamplesAndAlertsOncePerEpisode(t *testing.T) {
	h := sdktest.New(t, example.New)
	busy, calm := procDir(t, "busy"), procDir(t, "calm")
	if err := h.Configure(config(t, map[string]any{"proc_root": busy, "alert_load_per_cpu": 2, "interval": "1h"})); err != nil {
		t.Fatal(err)
	}
	h.Start()

	ev := h.WaitEvents(sdktest.OfType("loadavg"), 1, 10*time.Second)[0]
	want := map[string]any{
		"load1_milli": int64(12000), "load5_milli": int64(9500), "load15_milli": int64(4250),
		"runnable": int64(13), "procs": int64(402), "cpus": int64(2),
		"mem_total_kb": int64(4030000), "mem_available_kb": int64(120400),
	}
	for k, v := range want {
		if ev.Fields[k] != v {
			t.Errorf("loadavg %s = %v, want %v (event %s)", k, ev.Fields[k], v, ev)
		}
	}
	if ev.Alert || ev.Time.IsZero() {
		t.Errorf("loadavg event %s: alert %t, time %v", ev, ev.Alert, ev.Time)
	}

	alert := h.WaitEvents(sdktest.Alerts(), 1, 10*time.Second)[0]
	if alert.Type != "high_load" || alert.Severity != sdk.SevWarning ||
		alert.Int("load_per_cpu_milli") != 6000 || alert.Int("threshold_milli") != 2000 {
		t.Errorf("alert = %s", alert)
	}

	// The interval is an hour, so only Start and each Configure sample.
	// Each Configure samples at once. Still busy: no second alert.
	// Calm: the alert re-arms. Busy again: a second alert.
	steps := []struct {
		root       string
		wantAlerts int
	}{{busy, 1}, {calm, 1}, {busy, 2}}
	for i, st := range steps {
		if err := h.Configure(config(t, map[string]any{"proc_root": st.root, "alert_load_per_cpu": 2, "interval": "1h"})); err != nil {
			t.Fatal(err)
		}
		h.WaitEvents(sdktest.OfType("loadavg"), i+2, 10*time.Second)
		h.WaitEvents(sdktest.Alerts(), st.wantAlerts, 10*time.Second)
		h.WaitFor("the sample's alert, if any", 5*time.Second, func() bool { return h.Emitted() == uint64(h.Received()) })
		if got := len(alertsIn(h.Events())); got != st.wantAlerts {
			t.Fatalf("step %d (%s): %d alerts, want %d", i, filepath.Base(st.root), got, st.wantAlerts)
		}
	}
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	samples := len(h.WaitEvents(sdktest.OfType("loadavg"), 4, time.Second))
	if got := h.Counters()[example.CounterSamples]; got != 4 || samples != 4 {
		t.Errorf("%s = %d and %d loadavg events, want 4 of each (one at start, one per Configure)", example.CounterSamples, got, samples)
	}
}

func alertsIn(evs []sdktest.Event) []sdktest.Event {
	var out []sdktest.Event
	for _, e := range evs {
		if e.Alert {
			out = append(out, e)
		}
	}
	return out
}

func TestSampleErrorsAreCounted(t *testing.T) {
	h := sdktest.New(t, example.New)
	if err := h.Configure(config(t, map[string]any{"proc_root": procDir(t, "broken")})); err != nil {
		t.Fatal(err)
	}
	h.Start()
	h.WaitFor("sample_errors_total", 10*time.Second, func() bool { return h.Counters()[example.CounterSampleErrors] >= 1 })
	if n := h.Received(); n != 0 {
		t.Errorf("%d events from a broken /proc", n)
	}
}

func TestSnapshotTask(t *testing.T) {
	h := sdktest.New(t, example.New)
	if err := h.Configure(config(t, map[string]any{"proc_root": procDir(t, "calm")})); err != nil {
		t.Fatal(err)
	}
	raw, err := h.Task("snapshot", nil)
	if err != nil {
		t.Fatal(err)
	}
	var s example.Snapshot
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("snapshot %s: %v", raw, err)
	}
	if s.CPUs != 4 || s.Load1 != 0.52 || s.LoadPerCPU != 0.13 || s.Alerting {
		t.Errorf("snapshot = %s", raw)
	}
	if _, err := h.Task("reboot", nil); err == nil || !strings.Contains(err.Error(), `unknown task "reboot" (known: snapshot)`) {
		t.Errorf("Task(reboot) = %v", err)
	}
}

// TestRealProc samples this machine's /proc, which every Linux test host
// has.
func TestRealProc(t *testing.T) {
	h := sdktest.New(t, example.New)
	raw, err := h.Task("snapshot", nil)
	if err != nil {
		t.Fatal(err)
	}
	var s example.Snapshot
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	if s.CPUs < 1 || s.MemTotalKB == 0 || s.Procs < 1 {
		t.Errorf("snapshot of /proc = %s", raw)
	}
}
