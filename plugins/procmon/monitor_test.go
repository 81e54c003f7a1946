package procmon

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/plugins/procmon/cnproc"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/sdktest"
)

// recorder is the host side of a Monitor in these tests: it keeps the pid
// and type of each event and the counters. (The plugin-level tests use
// sdktest; a Monitor takes a bare Emitter.)
type recorder struct {
	mu       sync.Mutex
	events   []recorded
	counters sync.Map
}

type recorded struct {
	time   time.Time
	typ    string
	alert  bool
	pid    int64
	fields map[string]any
}

func (r *recorder) Emit(ev *sdk.Event) error {
	rec := recorded{time: ev.Time, typ: ev.Type, alert: ev.Alert, fields: map[string]any{}}
	for _, f := range ev.Fields {
		if f.Key == "pid" {
			rec.pid = f.Int
		}
		switch f.Kind {
		case sdk.KindString:
			rec.fields[f.Key] = f.Str
		case sdk.KindInt:
			rec.fields[f.Key] = f.Int
		case sdk.KindBool:
			rec.fields[f.Key] = f.Int != 0
		}
	}
	r.mu.Lock()
	r.events = append(r.events, rec)
	r.mu.Unlock()
	return nil
}

// fieldsOf returns the fields of every event emitted, in order.
func (r *recorder) fieldsOf() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]map[string]any, len(r.events))
	for i, e := range r.events {
		out[i] = e.fields
	}
	return out
}

func (r *recorder) Counter(name string) *sdk.Counter {
	c, _ := r.counters.LoadOrStore(name, &sdk.Counter{})
	return c.(*sdk.Counter)
}

func (r *recorder) has(typ string, pid int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e.typ == typ && e.pid == int64(pid) {
			return true
		}
	}
	return false
}

// waitExec runs /bin/true until the recorder has seen the exec of one,
// and returns its pid.
func waitExec(t *testing.T, r *recorder) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		cmd := exec.Command("/bin/sleep", "0.05")
		if err := cmd.Run(); err != nil {
			t.Fatal(err)
		}
		for range 20 {
			if r.has("exec", cmd.Process.Pid) {
				return cmd.Process.Pid
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	t.Fatal("no exec seen in 10s")
	return 0
}

// flakySource wraps a real socket and fails reads on demand. The kernel
// offers no way to make a netlink read fail at will, so the failure is
// injected; the reopened socket is real.
type flakySource struct {
	EventSource
	fail atomic.Bool
}

var errInjected = errors.New("injected read failure")

// Detach passes through, so the injected socket is read as a real one.
func (f *flakySource) Detach() error { return f.EventSource.(detacher).Detach() }

func (f *flakySource) Read() ([]byte, error) {
	b, err := f.EventSource.Read()
	if err == nil && f.fail.Load() {
		return nil, errInjected
	}
	return b, err
}

func TestReconnectAfterReadError(t *testing.T) {
	requireRoot(t)
	rec := &recorder{}
	clock := sdktest.NewFakeClock(time.Unix(0, 0))
	var dials atomic.Int32
	var first *flakySource
	dial := func(o cnproc.Options) (EventSource, error) {
		if o.ExecOnly {
			return cnproc.DialOptions(o)
		}
		n := dials.Add(1)
		if n == 2 {
			return nil, errors.New("injected dial failure")
		}
		c, err := cnproc.DialOptions(o)
		if err != nil {
			return nil, err
		}
		if n == 1 {
			first = &flakySource{EventSource: c}
			return first, nil
		}
		return c, nil
	}
	cfg := DefaultConfig()
	m, err := Start(context.Background(), cfg, Deps{Emitter: rec, Dial: dial, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	<-m.Ready()
	waitExec(t, rec)
	first.fail.Store(true)
	// The next event makes the read fail; the monitor must reopen (after
	// one failed attempt and a backoff) and go on delivering execs.
	_ = exec.Command("/bin/true").Run()
	waitExec(t, rec)
	if got := rec.Counter(CounterReconnects).Load(); got != 1 {
		t.Errorf("reconnects = %d, want 1", got)
	}
	if got := dials.Load(); got != 3 {
		t.Errorf("dials = %d, want 3 (first, failed retry, success)", got)
	}
	slept := clock.Sleeps()
	if len(slept) != 1 || slept[0] > cfg.ReconnectMin.D() || slept[0] <= 0 {
		t.Errorf("backoff sleeps %v, want one of at most %v", slept, cfg.ReconnectMin.D())
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.QueueSize = 12
	_, err := Start(context.Background(), cfg, Deps{Emitter: &recorder{}})
	if err == nil || !strings.Contains(err.Error(), "procmon.queue_size must be between 1024 and 1048576 (got 12)") {
		t.Errorf("err = %v", err)
	}
}

// TestDispatchKeepsExecs fills a worker queue with other events and checks
// that execs, which alerts come from, still get in and that every drop is
// counted.
func TestDispatchKeepsExecs(t *testing.T) {
	rec := &recorder{}
	cfg := DefaultConfig()
	cfg.Emit = []string{"exec", "fork"}
	m := &Monitor{cfg: cfg, c: newCounters(rec), emit: cfg.emitMask(), queues: []*evQueue{newEvQueue(64)}}
	for i := range 100 {
		m.dispatch(&cnproc.Event{What: cnproc.Fork, PID: int32(1000 + i), TGID: int32(1000 + i)})
	}
	for i := range 9 {
		m.dispatch(&cnproc.Event{What: cnproc.Exec, PID: int32(2000 + i), TGID: int32(2000 + i)})
	}
	m.dispatch(&cnproc.Event{What: cnproc.Fork, PID: 7, TGID: 3}) // a thread: ignored
	m.dispatch(&cnproc.Event{What: cnproc.UID, PID: 8, TGID: 8})  // not emitted: ignored
	tests := []struct {
		name string
		got  uint64
		want uint64
	}{
		{"queued", uint64(m.queues[0].len()), 64},
		{"queue_dropped", rec.Counter(CounterQueueDropped).Load(), 44 + 1},
		{"queue_dropped_exec", rec.Counter(CounterQueueDroppedExec).Load(), 1},
		{"exec_received", rec.Counter(CounterExecReceived).Load(), 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("%s = %d, want %d", tt.name, tt.got, tt.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		raw  string
		want string // "" for valid
	}{
		{"defaults", `{}`, ""},
		{"queue too small", `{"queue_size": 12}`, "procmon.queue_size must be between 1024 and 1048576 (got 12)"},
		{"workers", `{"workers": 0}`, "procmon.workers must be between 1 and 64 (got 0)"},
		{"coalesce after", `{"read_coalesce_after": 5000}`, "procmon.read_coalesce_after must be between 1 and 4096 (got 5000)"},
		{"coalesce after 1", `{"read_coalesce_after": 1}`, ""},
		{"exec prefetch type", `{"exec_prefetch": "yes"}`, `key "exec_prefetch" must be true or false (got string)`},
		{"exec prefetch off", `{"exec_prefetch": false}`, ""},
		{"read interval", `{"read_coalesce": "1s"}`, "procmon.read_coalesce must be between 0s and 100ms (got 1s)"},
		{"unknown key", `{"queue": 5}`, `unknown key "queue"`},
		{"emit kind", `{"emit": ["exec", "clone"]}`, `procmon.emit[1] must be one of fork, exec, exit, uid, gid, sid, comm, ptrace, coredump (got "clone")`},
		{"backoff order", `{"reconnect_min": "10s", "reconnect_max": "1s"}`, "procmon.reconnect_max must be at least procmon.reconnect_min (10s) (got 1s)"},
		{"disabled rule", `{"detections": {"disabled": ["procmon.nope"]}}`, `procmon.detections.disabled[0] must be one of procmon.reverse_shell`},
		{"allow without pattern", `{"detections": {"allow": [{"rule": "*"}]}}`, "procmon.detections.allow[0] must set at least one of exe, parent_exe, cmdline (got none)"},
		{"allow bad glob", `{"detections": {"allow": [{"rule": "*", "exe": "[x"}]}}`, `procmon.detections.allow[0].exe must be a valid glob pattern (got "[x")`},
		{"writable dir", `{"detections": {"writable_dirs": ["/tmp"]}}`, `procmon.detections.writable_dirs[0] must be an absolute path ending in / (got "/tmp")`},
		{"no shells", `{"detections": {"shells": []}}`, "procmon.detections.shells must be at least 1 (got length 0)"},
		{"good allow", `{"detections": {"allow": [{"rule": "procmon.world_writable_exec", "exe": "/tmp/ci-*"}]}}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := sdk.DecodeConfig(Name, []byte(tt.raw), DefaultConfig())
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestDetectorAllowAndDisable(t *testing.T) {
	d := DefaultConfig().Detections
	d.Disabled = []string{RuleDeletedBinaryExec}
	d.Allow = []AllowRule{{Rule: RuleWorldWritableExec, Exe: "/tmp/build-*/*"}}
	det := newDetector(&d)
	tests := []struct {
		name  string
		facts execFacts
		want  []string
	}{
		{"tmp binary", execFacts{exe: []byte("/tmp/x")}, []string{RuleWorldWritableExec}},
		{"allowed tmp binary", execFacts{exe: []byte("/tmp/build-1/cc")}, nil},
		{"deleted but disabled", execFacts{exe: []byte("/usr/bin/x (deleted)")}, nil},
		{"memfd", execFacts{exe: []byte("/memfd:x (deleted)")}, []string{RuleMemfdExec}},
		{"php-fpm8.2 spawns bash", execFacts{exe: []byte("/usr/bin/bash"), parentExe: []byte("/usr/sbin/php-fpm8.2")}, []string{RuleServiceShell}},
		{"nginx via sh -c", execFacts{exe: []byte("/usr/bin/bash"), parentExe: []byte("/usr/bin/dash"), grandparentExe: []byte("/usr/sbin/nginx")}, []string{RuleServiceShell}},
		{"nginxfoo is not nginx", execFacts{exe: []byte("/usr/bin/bash"), parentExe: []byte("/usr/sbin/nginxfoo")}, nil},
		{"socket stdout shell", execFacts{exe: []byte("/bin/bash"), stdout: []byte("socket:[1]")}, []string{RuleReverseShell}},
		{"socket stdin non-shell", execFacts{exe: []byte("/usr/bin/cat"), stdin: []byte("socket:[1]")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, i := range det.match(nil, &tt.facts) {
				got = append(got, rules[i].id)
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("fired %v, want %v", got, tt.want)
			}
		})
	}
}

func TestProcTableBounded(t *testing.T) {
	tb := newProcTable(256)
	for i := range 10000 {
		tb.put(int32(i+1), 1, []byte("/usr/bin/x"))
	}
	if n := tb.len(); n > 256 {
		t.Errorf("table holds %d entries, cap 256", n)
	}
	if _, ok := tb.get(10000); !ok {
		t.Error("newest entry evicted")
	}
	tb.remove(10000)
	if _, ok := tb.get(10000); ok {
		t.Error("removed entry still there")
	}
	// A pid that exited and came back holds a new slot: its old slot
	// coming round must not evict it.
	tb = newProcTable(256)
	tb.put(1, 0, []byte("/a"))
	tb.remove(1)
	for i := range 200 {
		tb.put(int32(100+i), 1, []byte("/b"))
	}
	tb.put(1, 0, []byte("/c")) // slot 201
	for i := range 100 {       // wraps past slot 0, where pid 1 used to be
		tb.put(int32(1000+i), 1, []byte("/b"))
	}
	if e, ok := tb.get(1); !ok || e.exe != "/c" {
		t.Errorf("re-added pid 1 evicted by its old slot: %+v %v", e, ok)
	}
}

type discard struct{ recorder }

func (d *discard) Emit(*sdk.Event) error { return nil }

// BenchmarkExecEnrich measures one exec's enrichment, detections and
// emission against a live process; allocs/op must stay 0.
func BenchmarkExecEnrich(b *testing.B) {
	cmd := exec.Command("/bin/sleep", "60")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	time.Sleep(50 * time.Millisecond)
	cfg := DefaultConfig()
	em := &discard{}
	m := &Monitor{cfg: cfg, deps: Deps{Emitter: em, ProcRoot: "/proc"}, c: newCounters(em), emit: cfg.emitMask(),
		det: newDetector(&cfg.Detections), table: newProcTable(cfg.ProcessTableSize), clock: newWallClock(nil, nil, nil)}
	w := newWorker(m)
	ev := cnproc.Event{What: cnproc.Exec, PID: int32(cmd.Process.Pid), TGID: int32(cmd.Process.Pid)}
	w.handle(&ev)
	if m.c.execGone.Load() != 0 {
		b.Fatal("process gone")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w.handle(&ev)
	}
}

// TestQueueGrowsInOrder checks that a queue that starts small grows up to
// its size without losing or reordering events, even with its ring
// wrapped, and refuses events past its size.
func TestQueueGrowsInOrder(t *testing.T) {
	const size = 1000
	q := newEvQueue(size)
	var batch []cnproc.Event
	next, want := int32(1), int32(1)
	// Wrap the small ring first: push and take a few, so head moves.
	for range 3 {
		for range 100 {
			if !q.push(&cnproc.Event{What: cnproc.Exec, TGID: next}) {
				t.Fatalf("push %d refused below the queue's size", next)
			}
			next++
		}
		batch = q.take(batch)
		for _, ev := range batch {
			if ev.TGID != want {
				t.Fatalf("took %d, want %d", ev.TGID, want)
			}
			want++
		}
	}
	for i := range size + 10 {
		ok := q.push(&cnproc.Event{What: cnproc.Exec, TGID: next})
		if ok != (i < size) {
			t.Fatalf("push %d of %d: accepted %v", i+1, size+10, ok)
		}
		if ok {
			next++
		}
	}
	if len(q.ring) != size {
		t.Errorf("ring grew to %d, want %d", len(q.ring), size)
	}
	batch = q.take(batch)
	if len(batch) != size {
		t.Fatalf("took %d events, want %d", len(batch), size)
	}
	for _, ev := range batch {
		if ev.TGID != want {
			t.Fatalf("took %d, want %d", ev.TGID, want)
		}
		want++
	}
}
