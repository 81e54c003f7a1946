package netmon

import (
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/sdktest"
)

func TestMain(m *testing.M) {
	if port, ok := os.LookupEnv(nsHelperEnv); ok {
		nsHelper(port) // a process in its own network namespace (netns_test.go)
		return
	}
	goleak.VerifyTestMain(m)
}

// TestPlugin runs netmon through the SDK's in-process harness: the real
// protocol path, batching and wire format.
func TestPlugin(t *testing.T) {
	h := sdktest.New(t, New)
	if info := h.Info(); info.Name != Name || !strings.Contains(string(info.ConfigSchema), "learning_period") {
		t.Fatalf("info: %v", info)
	}
	if err := h.Configure(`{"interval": "1s", "learning_period": "0s", "blocklist": ["::1/128"], "snapshot_budget": "1m", "attribution_fds": 10000000, "cpu_percent": 100}`); err != nil {
		t.Fatal(err)
	}
	l := listen(t, "tcp6", "[::1]:0")
	h.Start()
	port := portOf(l.Addr())
	// The listener existed before the first snapshot, which learns nothing
	// with a zero learning period: it alerts.
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range h.Events() {
				t.Log(e)
			}
		}
	})
	al := h.WaitEvents(func(e sdktest.Event) bool {
		return e.Type == RuleListenerUnexpected && e.Int("local_port") == port
	}, 1, 30*time.Second)
	if !al[0].Alert || al[0].Severity != sdk.SevWarning || al[0].Int("pid") != int64(os.Getpid()) {
		t.Fatalf("alert: %v", al[0])
	}
	dial(t, "tcp6", l.Addr().String())
	bl := h.WaitEvents(func(e sdktest.Event) bool {
		return e.Type == RuleOutboundBlocklisted && e.Int("remote_port") == port
	}, 1, 30*time.Second)
	if bl[0].Severity != sdk.SevCritical || bl[0].Str("remote_addr") != "::1" || bl[0].Int("pid") != int64(os.Getpid()) {
		t.Fatalf("blocklist alert: %v", bl[0])
	}
	h.WaitFor("snapshot counters", 30*time.Second, func() bool { return h.Counters()[CounterSnapshots] >= 2 })
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		config string
		want   []string // substrings of the error; none means valid
	}{
		{name: "defaults", config: `{}`},
		{name: "all keys", config: `{"interval":"10s","max_interval":"10m","cpu_percent":2,"snapshot_budget":"200ms","attribution_fds":1000,"udp":false,"skip_time_wait":true,"learning_period":"1h","baseline_ports":[22,443],"baseline_exes":["/usr/sbin/sshd"],"blocklist":["203.0.113.0/24","2001:db8::/32"],"shells":["bash"],"max_events_per_snapshot":50,"proc_root":"/proc"}`},
		{name: "interval too short", config: `{"interval":"100ms"}`, want: []string{"netmon.interval must be between 1s and 1h (got 100ms)"}},
		{name: "max below interval", config: `{"interval":"10s","max_interval":"5s"}`, want: []string{"netmon.max_interval must be at least netmon.interval (10s) (got 5s)"}},
		{name: "bad cidr", config: `{"blocklist":["10.0.0.0/8","10.0.0.300/32"]}`, want: []string{`netmon.blocklist[1] must be a CIDR such as 203.0.113.0/24 or 2001:db8::/32 (got "10.0.0.300/32")`}},
		{name: "port zero", config: `{"baseline_ports":[0]}`, want: []string{"netmon.baseline_ports[0] must be between 1 and 65535 (got 0)"}},
		{name: "port above 65535", config: `{"baseline_ports":[22,70000]}`, want: []string{"netmon.baseline_ports[1] must be between 1 and 65535 (got 70000)"}},
		{name: "negative port", config: `{"baseline_ports":[-1]}`, want: []string{"netmon.baseline_ports[0] must be between 1 and 65535 (got -1)"}},
		{name: "attribution fds negative", config: `{"attribution_fds":-1}`, want: []string{"netmon.attribution_fds must be between 0 and 10000000 (got -1)"}},
		{name: "learning period too long", config: `{"learning_period":"800h"}`, want: []string{"netmon.learning_period must be between 0s and 720h (got 800h0m0s)"}},
		{name: "max interval too long", config: `{"max_interval":"48h"}`, want: []string{"netmon.max_interval must be between 1s and 24h (got 48h0m0s)"}},
		{name: "bad duration", config: `{"interval":"five seconds"}`, want: []string{`key "interval" must be a duration such as "5s" (got "five seconds")`}},
		{name: "udp not a bool", config: `{"udp":"yes"}`, want: []string{`key "udp" must be true or false (got string)`}},
		{name: "blocklist not a list", config: `{"blocklist":"10.0.0.0/8"}`, want: []string{`key "blocklist" must be a list (got string)`}},
		{name: "empty blocklist entry", config: `{"blocklist":[""]}`, want: []string{`netmon.blocklist[0] must be a CIDR such as 203.0.113.0/24 or 2001:db8::/32 (got "")`}},
		{name: "empty shell", config: `{"shells":[""]}`, want: []string{`netmon.shells[0] must be a non-empty name without '/' (got "")`}},
		{name: "empty proc root", config: `{"proc_root":""}`, want: []string{"netmon.proc_root must be between 1 and 4096 (got length 0)"}},
		{name: "not json", config: `not json`, want: []string{"netmon: decoding config"}},
		{name: "interval in seconds", config: `{"interval":5}`},
		{name: "relative exe", config: `{"baseline_exes":["nginx"]}`, want: []string{`netmon.baseline_exes[0] must be an absolute path (got "nginx")`}},
		{name: "shell with slash", config: `{"shells":["/bin/sh"]}`, want: []string{`netmon.shells[0] must be a non-empty name without '/' (got "/bin/sh")`}},
		{name: "cpu percent", config: `{"cpu_percent":0}`, want: []string{"netmon.cpu_percent must be between 0.1 and 100 (got 0)"}},
		{name: "unknown key", config: `{"intervall":"5s"}`, want: []string{`unknown key "intervall"`}},
		{name: "several problems joined", config: `{"snapshot_budget":"1ms","max_events_per_snapshot":0}`, want: []string{
			"netmon.snapshot_budget must be between 10ms and 1m (got 1ms)",
			"netmon.max_events_per_snapshot must be between 1 and 1000000 (got 0)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := sdk.DecodeConfig(Name, []byte(tc.config), DefaultConfig())
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("invalid config accepted, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestFallbackProcNet runs a snapshot from /proc/net, as on a kernel
// without sock_diag, and checks it finds the same listener.
func TestFallbackProcNet(t *testing.T) {
	f := newFixture(t, nil)
	_ = f.m.dump.Close()
	f.m.dump = nil
	l := listen(t, "tcp4", "127.0.0.1:0")
	c := dial(t, "tcp4", l.Addr().String())
	st, err := f.m.snapshot()
	if err != nil || !st.Fallback {
		t.Fatalf("fallback snapshot: %+v %v", st, err)
	}
	evs := f.em.take()
	if ln := find(evs, TypeListenerNew, onPort(portOf(l.Addr()))); len(ln) != 1 || ln[0].num("pid") != int64(os.Getpid()) {
		t.Fatalf("want listener_new from /proc/net, got %v", ln)
	}
	if cn := find(evs, TypeConnectionNew, toRemote("127.0.0.1", portOf(l.Addr()))); len(cn) != 1 || cn[0].num("local_port") != portOf(c.LocalAddr()) {
		t.Fatalf("want connection_new from /proc/net, got %v", cn)
	}
	if f.em.Counter(CounterProcNetFallback).Load() != 1 {
		t.Fatal("fallback not counted")
	}
}

func TestShutdownWithoutRun(t *testing.T) {
	p := NewWithClock(nil, sdk.SystemClock())
	if err := p.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := p.Run(t.Context(), newRecorder()); err == nil {
		t.Fatal("Run after Shutdown succeeded")
	}
}
