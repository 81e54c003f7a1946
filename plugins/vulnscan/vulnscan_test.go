package vulnscan_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"

	"github.com/vigil-hids/vigil/plugins/vulnscan"
	"github.com/vigil-hids/vigil/plugins/vulnscan/collect"
	"github.com/vigil-hids/vigil/sdk/sdktest"
	"github.com/vigil-hids/vigil/vuln/inventory"
)

func TestMain(m *testing.M) {
	// The plugin reads rpm databases in a child process of its own binary,
	// which in these tests is the test binary.
	if vulnscan.IsRPMReader(os.Args) {
		os.Exit(vulnscan.RPMReaderMain(os.Args[2:], testReader(os.Getenv(readerModeEnv))))
	}
	goleak.VerifyTestMain(m)
}

// wait is a hang guard only: the tests never assert a duration.
const wait = 30 * time.Second

// debianRoot copies the Debian 12 fixture of package collect into a
// temporary root the test may change.
func debianRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	if err := os.CopyFS(root, os.DirFS(filepath.Join("collect", "testdata", "debian12"))); err != nil {
		t.Fatal(err)
	}
	return root
}

func config(t *testing.T, kv map[string]any) string {
	t.Helper()
	b, err := json.Marshal(kv)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestInfoAndDefaults(t *testing.T) {
	h := sdktest.New(t, vulnscan.New)
	info := h.Info()
	if info.Name != vulnscan.Name {
		t.Errorf("name %q", info.Name)
	}
	if got, want := string(info.ConfigDefaults), `{"rescan_interval":"12h0m0s","settle":"5s","watch":true,"root":"/","collect_timeout":"2m0s"}`; got != want {
		t.Errorf("defaults = %s, want %s", got, want)
	}
}

func TestConfigureValidates(t *testing.T) {
	tests := []struct {
		name   string
		config string
		want   []string
	}{
		{name: "empty keeps defaults", config: `{}`},
		{name: "fast rescan for a lab", config: `{"rescan_interval": "1m", "settle": "100ms"}`},
		{name: "rescan too often", config: `{"rescan_interval": "10s"}`, want: []string{"vulnscan.rescan_interval must be between 1m and 168h (got 10s)"}},
		{name: "two problems", config: `{"settle": "1ms", "root": "relative"}`, want: []string{
			"vulnscan.settle must be between 100ms and 10m (got 1ms)",
			`vulnscan.root must be an absolute path (got "relative")`,
		}},
		{name: "unknown key", config: `{"intervall": "1h"}`, want: []string{`unknown key "intervall"`}},
	}
	h := sdktest.New(t, vulnscan.New)
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

// TestDigestChangeAndInventoryTask: a digest at start; the full inventory
// on request, matching that digest; a new digest after dpkg replaces its
// status file, as it does on every install.
func TestDigestChangeAndInventoryTask(t *testing.T) {
	root := debianRoot(t)
	h := sdktest.New(t, vulnscan.New)
	if err := h.Configure(config(t, map[string]any{"root": root, "settle": "100ms"})); err != nil {
		t.Fatal(err)
	}
	h.Start()
	first := h.WaitEvents(sdktest.OfType(vulnscan.EventDigest), 1, wait)[0]
	if first.Str("reason") != vulnscan.ReasonStart || !first.Bool("changed") || first.Int("packages") != 4 ||
		first.Str("os_id") != "debian" || first.Str("os_version_id") != "12" || first.Str("os_codename") != "bookworm" ||
		first.Str("kernel") != "6.1.0-18-amd64" || first.Str("ecosystem") != "dpkg" || !strings.HasPrefix(first.Str("digest"), "sha256:") {
		t.Errorf("first digest event %s", first)
	}

	raw, err := h.Task(vulnscan.TaskInventory, nil)
	if err != nil {
		t.Fatal(err)
	}
	var inv vulnscan.Inventory
	if err := json.Unmarshal(raw, &inv); err != nil {
		t.Fatalf("inventory %s: %v", raw, err)
	}
	if inv.Digest != first.Str("digest") || inv.Inventory.Digest() != inv.Digest || len(inv.Inventory.Packages) != 4 {
		t.Errorf("inventory task: digest %s (recomputed %s), event digest %s, %d packages",
			inv.Digest, inv.Inventory.Digest(), first.Str("digest"), len(inv.Inventory.Packages))
	}

	// dpkg writes status-new and renames it over status.
	status := filepath.Join(root, "var/lib/dpkg/status")
	old, err := os.ReadFile(status)
	if err != nil {
		t.Fatal(err)
	}
	added := "\nPackage: curl\nStatus: install ok installed\nArchitecture: amd64\nVersion: 7.88.1-10+deb12u5\n"
	if err := os.WriteFile(status+"-new", append(old, added...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(status+"-new", status); err != nil {
		t.Fatal(err)
	}
	changed := h.WaitEvents(func(e sdktest.Event) bool {
		return e.Type == vulnscan.EventDigest && e.Str("reason") == vulnscan.ReasonChange
	}, 1, wait)[0]
	if changed.Str("digest") == first.Str("digest") || !changed.Bool("changed") || changed.Int("packages") != 5 {
		t.Errorf("after install: %s", changed)
	}
	h.WaitFor("inventory_changes_total", wait, func() bool { return h.Counters()[vulnscan.CounterChanges] == 1 })
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
}

// TestRescanSpreadByHost drives the rescan schedule with a fake clock:
// the first rescan waits the host's offset into the interval, the next
// ones the whole interval.
func TestRescanSpreadByHost(t *testing.T) {
	const host = "web-0042.example"
	clock := sdktest.NewFakeClock(time.Unix(1_700_000_000, 0))
	release := make(chan struct{})
	clock.OnSleep(func(n int) {
		if n >= 3 { // hold the third sleep: two rescans are enough
			<-release
		}
	})
	h := sdktest.New(t, vulnscan.NewWith(vulnscan.Options{Clock: clock, HostName: host}))
	t.Cleanup(func() { close(release) }) // runs before the harness stops the plugin
	if err := h.Configure(config(t, map[string]any{"root": debianRoot(t), "rescan_interval": "6h", "watch": false})); err != nil {
		t.Fatal(err)
	}
	h.Start()
	h.WaitEvents(func(e sdktest.Event) bool {
		return e.Type == vulnscan.EventDigest && e.Str("reason") == vulnscan.ReasonRescan && !e.Bool("changed")
	}, 2, wait)
	sleeps := clock.Sleeps()
	want := vulnscan.RescanDelay(host, 6*time.Hour)
	if len(sleeps) < 2 || sleeps[0] != want || sleeps[1] != 6*time.Hour {
		t.Errorf("sleeps %v, want [%v 6h0m0s ...]", sleeps, want)
	}
}

func TestRescanDelaySpreads(t *testing.T) {
	const interval = time.Hour
	var buckets [4]int
	for i := range 1000 {
		d := vulnscan.RescanDelay("host-"+string(rune('a'+i%26))+strings.Repeat("x", i/26), interval)
		if d < 0 || d >= interval {
			t.Fatalf("delay %v outside [0, %v)", d, interval)
		}
		buckets[d*4/interval]++
	}
	for i, n := range buckets {
		if n < 150 { // 250 expected per quarter
			t.Errorf("quarter %d of the interval has %d of 1000 hosts: %v", i, n, buckets)
		}
	}
	if vulnscan.RescanDelay("a", interval) != vulnscan.RescanDelay("a", interval) {
		t.Error("delay is not fixed by the host name")
	}
}

func TestCollectionErrorIsReported(t *testing.T) {
	h := sdktest.New(t, vulnscan.New)
	if err := h.Configure(config(t, map[string]any{"root": t.TempDir(), "watch": false})); err != nil {
		t.Fatal(err)
	}
	h.Start()
	ev := h.WaitEvents(sdktest.OfType(vulnscan.EventError), 1, wait)[0]
	if !strings.Contains(ev.Str("error"), "no dpkg, apk or rpm package database found") {
		t.Errorf("error event %s", ev)
	}
	if h.Counters()[vulnscan.CounterErrors] < 1 {
		t.Errorf("counters %v", h.Counters())
	}
	if _, err := h.Task("reboot", nil); err == nil || !strings.Contains(err.Error(), `unknown task "reboot" (known: inventory)`) {
		t.Errorf("Task(reboot) = %v", err)
	}
	if _, err := h.Task(vulnscan.TaskInventory, nil); err == nil {
		t.Error("inventory task with no database succeeded")
	}
}

// TestStuckCollection: a collection that hangs (as go-rpmdb does on some
// corrupt Berkeley DB files) is reported after collect_timeout, and no
// second one starts until it ends.
func TestStuckCollection(t *testing.T) {
	root := debianRoot(t)
	gate := make(chan struct{})
	var calls atomic.Int32
	hanging := func(r string) (*collect.Snapshot, error) {
		if calls.Add(1) == 1 {
			<-gate
		}
		return collect.Collect(r)
	}
	h := sdktest.New(t, vulnscan.NewWith(vulnscan.Options{Collect: hanging}))
	released := false
	release := func() {
		if !released {
			released = true
			close(gate)
		}
	}
	t.Cleanup(release)
	if err := h.Configure(config(t, map[string]any{"root": root, "watch": false, "collect_timeout": "1s"})); err != nil {
		t.Fatal(err)
	}
	h.Start()
	ev := h.WaitEvents(sdktest.OfType(vulnscan.EventError), 1, wait)[0]
	if !strings.Contains(ev.Str("error"), "did not finish within 1s") {
		t.Errorf("error event %s", ev)
	}
	if _, err := h.Task(vulnscan.TaskInventory, nil); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Errorf("inventory task while stuck = %v", err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d collections started while one was stuck", n)
	}
	release()
	h.WaitFor("the inventory task to work again", wait, func() bool {
		_, err := h.Task(vulnscan.TaskInventory, nil)
		return err == nil
	})
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
}

// TestRealHost collects this machine's inventory through the plugin.
func TestRealHost(t *testing.T) {
	h := sdktest.New(t, vulnscan.New)
	if err := h.Configure(`{}`); err != nil {
		t.Fatal(err)
	}
	raw, err := h.Task(vulnscan.TaskInventory, nil)
	if err != nil {
		t.Fatal(err)
	}
	var inv vulnscan.Inventory
	if err := json.Unmarshal(raw, &inv); err != nil {
		t.Fatal(err)
	}
	if inv.Inventory.Ecosystem != "dpkg" || len(inv.Inventory.Packages) < 50 || inv.Kernel == "" {
		t.Errorf("this Debian host: %s, %d packages, kernel %q", inv.Inventory.Ecosystem, len(inv.Inventory.Packages), inv.Kernel)
	}
	var _ inventory.Inventory = inv.Inventory
}
