package procmon

import (
	"context"
	"errors"
	"time"
	"unsafe"

	"github.com/vigil-hids/vigil/plugins/procmon/cnproc"
	"github.com/vigil-hids/vigil/plugins/procmon/procinfo"
	"github.com/vigil-hids/vigil/sdk"
)

// clkTck is USER_HZ, the unit of start times in /proc/PID/stat; it is 100
// on every Linux architecture Vigil builds for.
const clkTck = 100

// worker holds one enrichment worker's reusable state: nothing it does per
// event allocates once its buffers have grown.
type worker struct {
	m      *Monitor
	r      *procinfo.Reader
	ev     sdk.Event
	fields []sdk.Field
	tty    []byte
	fired  []int
	facts  execFacts
	st     procinfo.Status
	stat   procinfo.Stat
	cont   procinfo.Container
	pexe   []byte
	gpexe  []byte
	batch  []cnproc.Event
	exits  map[int32]int
}

func (m *Monitor) work(ctx context.Context, q *evQueue) error {
	w := newWorker(m)
	defer w.r.Close()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-q.wake:
		}
		w.batch = q.take(w.batch)
		w.handleBatch()
	}
}

// handleBatch handles a batch of events in order. An exec whose exit is
// already in the same batch is not looked up in /proc: the process is
// gone, and the reads would only fail.
func (w *worker) handleBatch() {
	clear(w.exits)
	for i := range w.batch {
		if w.batch[i].What == cnproc.Exit {
			w.exits[w.batch[i].TGID] = i
		}
	}
	for i := range w.batch {
		ev := &w.batch[i]
		if ev.What == cnproc.Exec {
			if j, ok := w.exits[ev.TGID]; ok && j > i {
				w.execGone(ev)
				continue
			}
		}
		w.handle(ev)
	}
}

func newWorker(m *Monitor) *worker {
	return &worker{
		m:      m,
		r:      procinfo.NewReader(m.deps.ProcRoot, m.cfg.CmdlineMax),
		fields: make([]sdk.Field, 0, 32),
		tty:    make([]byte, 0, 32),
		fired:  make([]int, 0, len(rules)),
		pexe:   make([]byte, 4096),
		gpexe:  make([]byte, 4096),
		exits:  make(map[int32]int, 64),
	}
}

// str views b as a string without copying. Emit encodes an event before it
// returns, so the view never outlives the buffer's contents.
func str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

func (w *worker) handle(ev *cnproc.Event) {
	m := w.m
	switch ev.What {
	case cnproc.Exec:
		w.exec(ev)
		return
	case cnproc.Exit:
		m.table.remove(ev.TGID)
	case cnproc.Fork:
		if p, ok := m.table.get(ev.ParentTGID); ok {
			m.table.put(ev.TGID, ev.ParentTGID, view(p.exe))
		}
	}
	if ev.What&m.emit == 0 {
		return
	}
	f := w.fields[:0]
	f = append(f, sdk.Int("pid", int64(ev.TGID)), sdk.Int("tid", int64(ev.PID)))
	switch ev.What {
	case cnproc.Fork:
		f = append(f, sdk.Int("ppid", int64(ev.ParentTGID)))
	case cnproc.Exit:
		f = append(f, sdk.Int("ppid", int64(ev.ParentTGID)), sdk.Int("exit_code", int64(ev.ExitCode)),
			sdk.Int("exit_signal", int64(ev.ExitSignal)))
	case cnproc.UID:
		f = append(f, sdk.Int("uid", int64(ev.RealID)), sdk.Int("euid", int64(ev.EffID)))
	case cnproc.GID:
		f = append(f, sdk.Int("gid", int64(ev.RealID)), sdk.Int("egid", int64(ev.EffID)))
	case cnproc.Comm:
		f = append(f, sdk.String("comm", str(ev.Comm[:ev.CommLen])))
	case cnproc.Ptrace:
		f = append(f, sdk.Int("tracer_pid", int64(ev.ParentTGID)), sdk.Bool("attach", ev.ParentTGID != 0))
	case cnproc.Coredump:
		f = append(f, sdk.Int("ppid", int64(ev.ParentTGID)))
	}
	w.fields = f
	w.ev = sdk.Event{Type: ev.What.String(), Time: w.eventTime(ev), Severity: sdk.SevInfo, Fields: f}
	_ = m.deps.Emitter.Emit(&w.ev)
}

func (w *worker) eventTime(ev *cnproc.Event) time.Time {
	return time.Unix(0, w.m.clock.wall(int64(ev.Timestamp)))
}

// execGone emits an exec whose process is known to have exited already:
// only what the exec path read in time, if anything, and the ppid known
// from the process table.
func (w *worker) execGone(ev *cnproc.Event) { w.execEvent(ev, true) }

// exec enriches an exec event from /proc, runs the detections, and emits
// any alerts before the telemetry event.
func (w *worker) exec(ev *cnproc.Event) { w.execEvent(ev, false) }

// execEvent takes what the exec path read of ev, if it got there, and reads
// the rest from /proc unless the process is known to be gone. The event
// carries proc_gone (and is counted) whenever the worker found the process
// gone, even if the exec path had read its command line.
func (w *worker) execEvent(ev *cnproc.Event, knownGone bool) {
	m := w.m
	pid := ev.TGID
	f := w.fields[:0]
	f = append(f, sdk.Int("pid", int64(pid)))
	w.facts = execFacts{}
	ppid := int32(-1)
	pf := m.pre.claim(ev)
	if pf != nil {
		m.c.execPrefetched.Add(1)
		f = w.addPrefetched(f, pf)
	}
	gone := knownGone
	if !gone {
		if err := w.r.Open(pid); err != nil {
			gone = true
		} else {
			gone = w.readProc(pid, &f, pf, &ppid)
		}
		w.r.Close()
	}
	if gone {
		m.c.execGone.Add(1)
		f = append(f, sdk.Bool("proc_gone", true))
		if ppid < 0 {
			if p, ok := m.table.get(pid); ok {
				// Known from its fork or an earlier exec: at least the parent.
				ppid = p.ppid
				f = append(f, sdk.Int("ppid", int64(ppid)))
			}
		}
	}
	if w.facts.haveExe {
		if ppid > 0 {
			f = w.lineage(f, ppid)
		}
		m.table.put(pid, ppid, w.facts.exe)
	}
	w.fields = f
	t := w.eventTime(ev)

	if w.facts.haveExe {
		w.fired = m.det.match(w.fired[:0], &w.facts)
		for _, i := range w.fired {
			r := &rules[i]
			af := append(f, sdk.String("rule_id", r.id), sdk.String("rule", r.summary))
			w.ev = sdk.Event{Type: "alert", Time: t, Alert: true, Severity: r.severity, Fields: af}
			if m.deps.Emitter.Emit(&w.ev) == nil {
				m.c.alerts.Add(1)
			}
			w.fields = af[:len(f)]
		}
	}
	w.ev = sdk.Event{Type: "exec", Time: t, Severity: sdk.SevInfo, Fields: f}
	if m.emit&cnproc.Exec != 0 {
		_ = m.deps.Emitter.Emit(&w.ev)
		m.c.execEmitted.Add(1)
	}
	m.pre.release(pf) // the fields viewed its buffers until Emit copied them
}

// readProc reads the open process into fields and facts, skipping what
// the exec path already read (pf, may be nil), and sets *ppid if it finds
// it. It returns true if the process was gone (exited or reaped) before it
// could be read. The most perishable files come first: the executable
// link and the command line vanish when the process exits, status and
// stat only when it is reaped.
func (w *worker) readProc(pid int32, fp *[]sdk.Field, pf *pfSlot, ppid *int32) (gone bool) {
	m, r, f := w.m, w.r, *fp
	defer func() { *fp = f }()
	if pf == nil {
		exe, err := r.Exe()
		if err != nil {
			return errors.Is(err, procinfo.ErrGone)
		}
		cmdline, err := r.Cmdline()
		if err != nil {
			return errors.Is(err, procinfo.ErrGone)
		}
		w.facts.haveExe, w.facts.exe, w.facts.cmdline = true, exe, cmdline
		f = append(f, sdk.String("exe", str(exe)), sdk.String("cmdline", str(cmdline)))
		if cwd, err := r.Cwd(); err == nil {
			f = append(f, sdk.String("cwd", str(cwd)))
		}
		if m.det.needsFDs(exe) {
			w.facts.stdin, _ = r.FD(0)
			w.facts.stdout, _ = r.FD(1)
			f = append(f, sdk.String("stdin", str(w.facts.stdin)), sdk.String("stdout", str(w.facts.stdout)))
		}
	}
	if *ppid < 0 {
		if err := r.Status(&w.st); err == nil {
			*ppid = w.st.PPID
			f = append(f, sdk.Int("ppid", int64(*ppid)), sdk.Int("uid", int64(w.st.UID)), sdk.Int("euid", int64(w.st.EUID)),
				sdk.Int("gid", int64(w.st.GID)), sdk.Int("egid", int64(w.st.EGID)))
		} else if pf != nil && errors.Is(err, procinfo.ErrGone) {
			return true // reaped: the exec path's fields are all there is
		}
	}
	if err := r.Stat(&w.stat); err == nil {
		if *ppid < 0 {
			*ppid = w.stat.PPID
			f = append(f, sdk.Int("ppid", int64(*ppid)))
		}
		start := m.clock.boot() + int64(w.stat.StartTicks)*(int64(time.Second)/clkTck)
		f = append(f, sdk.Int("start_time", start))
		if w.stat.TTY != 0 {
			w.tty = procinfo.AppendTTY(w.tty[:0], w.stat.TTY)
			f = append(f, sdk.String("tty", str(w.tty)))
		}
	} else if pf != nil && errors.Is(err, procinfo.ErrGone) {
		return true // reaped: the exec path's fields are all there is
	}
	if pidNS, mntNS, err := r.Namespaces(); err == nil {
		f = append(f, sdk.Int("pid_ns", int64(pidNS)), sdk.Int("mnt_ns", int64(mntNS)))
	}
	if err := r.Cgroup(&w.cont); err == nil && w.cont.Runtime != "" {
		f = append(f, sdk.String("container_runtime", w.cont.Runtime))
		if len(w.cont.ID) > 0 {
			f = append(f, sdk.String("container_id", str(w.cont.ID)))
		}
		if len(w.cont.PodUID) > 0 {
			f = append(f, sdk.String("pod_uid", str(w.cont.PodUID)))
		}
	}
	return false
}

// lineage adds the parent's executable, and looks one generation further
// for the detections when the parent is itself a shell (nginx -> sh -c ->
// bash).
func (w *worker) lineage(f []sdk.Field, ppid int32) []sdk.Field {
	m, r := w.m, w.r
	var parentExe []byte
	p, known := m.table.get(ppid)
	if known {
		parentExe = view(p.exe)
	} else if b, err := r.OtherExe(ppid, w.pexe); err == nil {
		parentExe = b
	}
	if len(parentExe) == 0 {
		return f
	}
	w.facts.parentExe = parentExe
	f = append(f, sdk.String("parent_exe", str(parentExe)))
	if !m.det.isShell(parentExe) {
		return f
	}
	gpid := p.ppid
	if !known {
		gpid, _ = r.OtherPPid(ppid)
	}
	if gpid <= 0 {
		return f
	}
	if gp, ok := m.table.get(gpid); ok {
		w.facts.grandparentExe = view(gp.exe)
	} else if b, err := r.OtherExe(gpid, w.gpexe); err == nil {
		w.facts.grandparentExe = b
	}
	return f
}

// view returns the bytes of s without copying; they must not be written.
func view(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
