package procmon

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/plugins/procmon/cnproc"
	"github.com/vigil-hids/vigil/plugins/procmon/procinfo"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/sdktest"
)

// quickExit writes a static x86-64 executable that calls exit(0) as its
// first instruction: a process that lives a few microseconds after its
// exec, like the bench's storm child.
func quickExit(t *testing.T, dir string) string {
	t.Helper()
	if runtime.GOARCH != "amd64" {
		t.Skip("the quick-exit child is x86-64 machine code")
	}
	const base, hdr = 0x400000, 64 + 56
	code := []byte{0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05} // mov eax,60; xor edi,edi; syscall
	b := make([]byte, hdr, hdr+len(code))
	copy(b, "\x7fELF\x02\x01\x01")
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2)    // ET_EXEC
	le.PutUint16(b[18:], 0x3e) // x86-64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], base+hdr) // entry
	le.PutUint64(b[32:], 64)       // program headers
	le.PutUint16(b[52:], 64)
	le.PutUint16(b[54:], 56)
	le.PutUint16(b[56:], 1)
	p := b[64:]
	le.PutUint32(p[0:], 1) // PT_LOAD
	le.PutUint32(p[4:], 5) // R+X
	le.PutUint64(p[16:], base)
	le.PutUint64(p[24:], base)
	le.PutUint64(p[32:], uint64(hdr+len(code)))
	le.PutUint64(p[40:], uint64(hdr+len(code)))
	le.PutUint64(p[48:], 0x1000)
	b = append(b, code...)
	path := filepath.Join(dir, "quickexit")
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestQuickExitKeepsCmdline runs a child that exits microseconds after its
// exec, many times, until one is reported gone with its command line: only
// the exec path can give that (a worker reading /proc after the exit finds
// neither executable nor command line). It does not assert a rate.
func TestQuickExitKeepsCmdline(t *testing.T) {
	h := startPlugin(t, `{}`)
	bin := quickExit(t, privateDir(t))
	if err := exec.Command(bin).Run(); err != nil {
		t.Fatalf("the quick-exit child does not run: %v", err)
	}
	want := bin + " vigil-quick-exit-arg"
	pids := map[int64]bool{}
	got := func(e sdktest.Event) bool {
		return e.Type == "exec" && pids[e.Int("pid")] && e.Bool("proc_gone") && e.Str("cmdline") == want
	}
	deadline := time.Now().Add(60 * time.Second)
	for n := 0; n < 5000 && time.Now().Before(deadline); n++ {
		cmd := exec.Command(bin, "vigil-quick-exit-arg")
		if err := cmd.Run(); err != nil {
			t.Fatal(err)
		}
		pids[int64(cmd.Process.Pid)] = true
		if n%50 != 49 {
			continue
		}
		time.Sleep(20 * time.Millisecond) // the events of the last ones
		for _, e := range h.Events() {
			if got(e) {
				if e.Str("exe") != bin {
					t.Errorf("exe = %q, want %q (%v)", e.Str("exe"), bin, e)
				}
				t.Logf("found after %d children: %v", n+1, e)
				return
			}
		}
	}
	t.Fatalf("none of %d children that exit at once was reported with its command line; counters %v", len(pids), h.Counters())
}

// TestQuickExitWithoutExecPath is the fallback: with exec_prefetch off,
// the same children are all still captured, and none gone is reported
// with a command line (there was nobody to read it in time).
func TestQuickExitWithoutExecPath(t *testing.T) {
	h := startPlugin(t, `{"exec_prefetch": false}`)
	bin := quickExit(t, privateDir(t))
	pids := map[int64]bool{}
	for range 200 {
		cmd := exec.Command(bin, "x")
		if err := cmd.Run(); err != nil {
			t.Fatal(err)
		}
		pids[int64(cmd.Process.Pid)] = true
	}
	evs := h.WaitEvents(func(e sdktest.Event) bool { return e.Type == "exec" && pids[e.Int("pid")] }, len(pids), 30*time.Second)
	for _, e := range evs {
		if e.Bool("proc_gone") && e.Str("cmdline") != "" {
			t.Errorf("a gone process has a command line without the exec path: %v", e)
		}
	}
	if c := h.Counters(); c[CounterExecPrefetched] != 0 {
		t.Errorf("exec_prefetched = %d without the exec path", c[CounterExecPrefetched])
	}
}

// prefetchMonitor is a monitor with an exec path table and no sockets.
func prefetchMonitor(em sdk.Emitter) *Monitor {
	cfg := DefaultConfig()
	return &Monitor{cfg: cfg, deps: Deps{Emitter: em, ProcRoot: "/proc"}, c: newCounters(em), emit: cfg.emitMask(),
		det: newDetector(&cfg.Detections), table: newProcTable(cfg.ProcessTableSize), clock: newWallClock(nil, nil, nil),
		pre: &prefetchTable{}}
}

// TestPrefetchOutlivesProcess: what the exec path read of a process is
// emitted with the exec even when the process is gone by the time the
// worker gets to it, and it is then counted as gone.
func TestPrefetchOutlivesProcess(t *testing.T) {
	dir := privateDir(t)
	cmd := exec.Command("/bin/sleep", "60")
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := int32(cmd.Process.Pid)
	rec := &recorder{}
	m := prefetchMonitor(rec)
	ev := cnproc.Event{What: cnproc.Exec, PID: pid, TGID: pid, Timestamp: 12345}
	waitExeced(t, pid, "/bin/sleep")
	m.pre.fill(procinfo.NewReader("/proc", 4096), m.det, &ev)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	w := newWorker(m)
	w.handle(&ev)
	evs := rec.fieldsOf()
	if len(evs) != 1 {
		t.Fatalf("%d events, want 1: %v", len(evs), evs)
	}
	e := evs[0]
	want := map[string]any{"pid": int64(pid), "exe": "/usr/bin/sleep", "cmdline": "/bin/sleep 60", "cwd": dir,
		"proc_gone": true}
	for k, v := range want {
		if e[k] != v {
			t.Errorf("%s = %v, want %v (event %v)", k, e[k], v, e)
		}
	}
	if m.c.execGone.Load() != 1 || m.c.execPrefetched.Load() != 1 {
		t.Errorf("exec_proc_gone %d, exec_prefetched %d, want 1 and 1", m.c.execGone.Load(), m.c.execPrefetched.Load())
	}
	if s := m.pre.slot(pid); s.state.Load() != pfEmpty {
		t.Errorf("slot state %d after the worker, want empty", s.state.Load())
	}
}

// waitExeced waits until the child pid has exec'd prog (its command line
// starts with it): a loaded box may take a while between fork and exec,
// and /proc shows the test binary until then.
func waitExeced(t *testing.T, pid int32, prog string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.HasPrefix(string(b), prog) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d has not exec'd %s after 30 s", pid, prog)
		}
	}
}

// TestPrefetchOtherExecIgnored: a slot filled for another exec of the
// same pid (an overwritten or stale slot) is not taken; the worker reads
// /proc itself, as without the exec path.
func TestPrefetchOtherExecIgnored(t *testing.T) {
	cmd := exec.Command("/bin/sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := int32(cmd.Process.Pid)
	waitExeced(t, pid, "/bin/sleep")
	rec := &recorder{}
	m := prefetchMonitor(rec)
	old := cnproc.Event{What: cnproc.Exec, PID: pid, TGID: pid, Timestamp: 1}
	m.pre.fill(procinfo.NewReader("/proc", 4096), m.det, &old)
	ev := old
	ev.Timestamp = 2
	newWorker(m).handle(&ev)
	e := rec.fieldsOf()[0]
	if e["cmdline"] != "/bin/sleep 60" || e["start_time"] == nil || e["proc_gone"] != nil {
		t.Errorf("event %v, want one read from /proc", e)
	}
	if m.c.execPrefetched.Load() != 0 {
		t.Errorf("exec_prefetched = %d, want 0", m.c.execPrefetched.Load())
	}
	if s := m.pre.slot(pid); s.state.Load() != pfReady {
		t.Errorf("the other exec's slot is in state %d, want still ready", s.state.Load())
	}
}

// BenchmarkPrefetch measures the exec path's reads of one live process
// and the worker's claim and enrichment of the same exec; allocs/op must
// stay 0.
func BenchmarkPrefetch(b *testing.B) {
	cmd := exec.Command("/bin/sleep", "60")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	time.Sleep(50 * time.Millisecond)
	em := &discard{}
	m := prefetchMonitor(em)
	r := procinfo.NewReader("/proc", m.cfg.CmdlineMax)
	w := newWorker(m)
	ev := cnproc.Event{What: cnproc.Exec, PID: int32(cmd.Process.Pid), TGID: int32(cmd.Process.Pid)}
	m.pre.fill(r, m.det, &ev)
	w.handle(&ev)
	if m.c.execPrefetched.Load() != 1 || m.c.execGone.Load() != 0 {
		b.Fatal("not prefetched, or process gone")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ev.Timestamp = uint64(i)
		m.pre.fill(r, m.det, &ev)
		w.handle(&ev)
	}
	if m.c.execPrefetched.Load() != uint64(b.N)+1 {
		b.Fatalf("exec_prefetched %d, want %d", m.c.execPrefetched.Load(), b.N+1)
	}
}

// The exec path pauses between reads only while its wake-ups come faster
// than execBatchRate, and stops as soon as they slow down.
func TestExecPace(t *testing.T) {
	var p execPace
	t0 := time.Unix(1000, 0)
	if p.fast(t0) {
		t.Fatal("the first wake-up says fast")
	}
	now := t0
	for range 100 { // 5,000/s
		now = now.Add(200 * time.Microsecond)
		p.fast(now)
	}
	if !p.fast(now.Add(200 * time.Microsecond)) {
		t.Fatalf("5,000 wake-ups/s not fast (average %v)", p.avg)
	}
	now = now.Add(200 * time.Microsecond)
	for range 40 { // 500/s
		now = now.Add(2 * time.Millisecond)
		p.fast(now)
	}
	if p.fast(now.Add(2 * time.Millisecond)) {
		t.Fatalf("500 wake-ups/s fast (average %v)", p.avg)
	}
}

// reaped tells a reaped process from a live one or a zombie.
func TestReaped(t *testing.T) {
	if reaped(int32(os.Getpid())) {
		t.Fatal("this process reported reaped")
	}
	cmd := exec.Command("/bin/true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := int32(cmd.Process.Pid)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if !reaped(pid) {
		t.Fatalf("reaped child %d not reported reaped", pid)
	}
}
