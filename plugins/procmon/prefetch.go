package procmon

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vigil-hids/vigil/plugins/procmon/cnproc"
	"github.com/vigil-hids/vigil/plugins/procmon/procinfo"
	"github.com/vigil-hids/vigil/sdk"
)

// The exec path. A process that lives a few microseconds is gone before a
// batched reader gets to it, and a reader woken for every datagram (fork,
// exec and exit arrive separately) pays a thread wake-up for each. So a
// second socket, filtered in the kernel to exec events only
// (cnproc.ExecFilter), is waited on by its own goroutine: only an exec
// wakes it, and it reads at once what dies with the process when it exits
// (command line, executable, working directory, and a shell's stdin and
// stdout) into a small table. The worker that later handles the same exec from the
// main socket claims those fields and reads the rest.
//
// The exec path is best effort and counts nothing: its socket has a small
// buffer and may overflow, a slot may be overwritten before it is claimed,
// and the two paths may race; in every such case the worker reads /proc as
// it would without the exec path. Loss accounting stays on the main socket.

// prefetchSlots is the table's size (a power of two). Slots are indexed by
// pid, so consecutive pids of a storm get distinct slots; a worker claims
// its slot within a read interval of the exec.
const prefetchSlots = 256

// Slot states.
const (
	pfEmpty   uint32 = iota
	pfWriting        // the exec path is filling it
	pfReady          // filled, waiting for a worker
	pfReading        // a worker holds it
)

// pfSlot holds what the exec path read of one exec. Its fields are written
// only in pfWriting and read only in pfReading: the state's atomic
// transitions order them.
type pfSlot struct {
	state atomic.Uint32
	// the exec's key: the same kernel message reaches both sockets
	pid int32
	ts  uint64

	exe, cmdline, cwd, stdin, stdout []byte
	haveCwd, haveFDs                 bool
}

// prefetchTable is the bounded table between the exec path and the
// workers. Its buffers grow to the longest value seen (at most
// cmdline_max for a command line, PATH_MAX for a path) and are reused.
type prefetchTable struct {
	slots [prefetchSlots]pfSlot
}

func (t *prefetchTable) slot(pid int32) *pfSlot { return &t.slots[uint32(pid)%prefetchSlots] }

// claim returns the slot holding what the exec path read of ev, now held
// by the caller until release, or nil.
func (t *prefetchTable) claim(ev *cnproc.Event) *pfSlot {
	if t == nil {
		return nil
	}
	s := t.slot(ev.TGID)
	if s.state.Load() != pfReady || !s.state.CompareAndSwap(pfReady, pfReading) {
		return nil
	}
	if s.pid != ev.TGID || s.ts != ev.Timestamp {
		s.state.Store(pfReady) // another exec's, not ours
		return nil
	}
	return s
}

// release frees a claimed slot.
func (t *prefetchTable) release(s *pfSlot) {
	if s != nil {
		s.state.Store(pfEmpty)
	}
}

// fill reads the process of exec event ev into its slot with r. A slot a
// worker holds is left alone (that exec is then read by the worker only).
func (t *prefetchTable) fill(r *procinfo.Reader, det *detector, ev *cnproc.Event) {
	s := t.slot(ev.TGID)
	st := s.state.Load()
	if st == pfReading || st == pfWriting || !s.state.CompareAndSwap(st, pfWriting) {
		return
	}
	s.pid, s.ts = ev.TGID, ev.Timestamp
	if readPrefetch(r, det, ev.TGID, s) {
		s.state.Store(pfReady)
	} else {
		s.state.Store(pfEmpty)
	}
}

// readPrefetch reads into s what dies with the process when it exits:
// the command line first, the executable, the working directory, and a
// shell's stdin and stdout. Status (ppid, credentials) and the rest stay
// readable until the process is reaped, and are the worker's.
func readPrefetch(r *procinfo.Reader, det *detector, pid int32, s *pfSlot) bool {
	cmdline, exe, cwd, err := r.Peek(pid)
	if err != nil {
		return false
	}
	s.cmdline, s.exe, s.cwd = append(s.cmdline[:0], cmdline...), append(s.exe[:0], exe...), append(s.cwd[:0], cwd...)
	s.haveCwd = cwd != nil
	s.haveFDs = false
	if det.needsFDs(exe) {
		in, _ := r.PeekFD(pid, 0)
		out, _ := r.PeekFD(pid, 1)
		s.stdin, s.stdout, s.haveFDs = append(s.stdin[:0], in...), append(s.stdout[:0], out...), true
	}
	return true
}

// execPath is the exec socket's goroutine: read, fill, wait again.
//
// On a quiet host (the main reader's interval has grown past
// read_coalesce) an exec is handed on at once: the main reader is nudged,
// so the worker reads the rest (status, stat, namespaces, cgroup) while
// the process is there, as a quiet socket was always read. Under load it
// is not: there
// the worker's reads at that moment cost more than they find, and what
// outlives the exit (until the process is reaped) is read just as well a
// read interval later; see docs/procmon.md.
//
// An exec whose process is already reaped is skipped by a kill(pid, 0)
// (reaped) before any /proc lookup. Above execBatchRate it pauses
// execBatchWait after each read, so that one wake-up serves the execs of
// the pause (execPace).
//
// While execs keep coming (each within execBusyWait of the last), it
// waits for the next one in a raw poll that keeps the goroutine's P
// (cnproc.Conn.WaitRaw), letting the other goroutines run before each
// wait: one thread wake-up per exec, instead of a wake-up through the
// scheduler plus the runtime's monitor thread woken from its deep sleep
// by the command line read (a scheduled system call, so that a process
// whose memory cannot be read holds up only this goroutine). When execs
// stop, it parks in the poller and costs nothing.
func (m *Monitor) execPath(ctx context.Context) error {
	r := procinfo.NewReader(m.deps.ProcRoot, m.cfg.CmdlineMax)
	defer r.Close()
	var ev cnproc.Event
	hostProc := m.deps.ProcRoot == "/proc" // kill(2) sees this pid namespace
	fill := func(b []byte) {
		for len(b) > 0 {
			n, err := cnproc.Decode(b, &ev)
			b = b[n:]
			if err == nil && ev.What == cnproc.Exec {
				if hostProc && reaped(ev.TGID) {
					continue // gone: /proc has nothing of it, and its lookup costs more
				}
				m.pre.fill(r, m.det, &ev)
			}
		}
	}
	for {
		m.mu.Lock()
		src := m.xsrc
		m.mu.Unlock()
		b, err := src.Read()
		if err == nil {
			fill(b)
			if m.quiet.Load() {
				select {
				case m.nudge <- struct{}{}:
				default:
				}
			}
			if rw, ok := src.(rawWaiter); ok {
				var pace execPace
				for err == nil {
					runtime.Gosched()
					if pace.fast(time.Now()) {
						rawSleep(execBatchWait)
						if b, err = rw.ReadNow(); err == nil && len(b) > 0 {
							fill(b)
							continue
						}
						if err != nil {
							break
						}
					}
					if !rw.WaitRaw(execBusyWait) {
						break
					}
					if b, err = rw.ReadNow(); err == nil {
						fill(b)
					}
				}
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, unix.ENOBUFS) {
				continue // lossy by design: the main path has these execs
			}
			m.log.Warn("reading the exec socket failed, reopening it", "error", err)
			if err := m.reconnect(ctx, true); err != nil {
				return nil // closed
			}
		}
	}
}

// execBusyWait is the longest the exec path keeps its P waiting for the
// next exec; it is also the longest the rest of the plugin waits for it.
const execBusyWait = 5 * time.Millisecond

// Above execBatchRate execs per second (as the exec path sees them, a
// moving average), the exec path lets execs gather for execBatchWait
// before it looks again, so that one thread wake-up serves several; below
// it, each exec wakes it at once. The execs that arrive in that pause are
// read up to execBatchWait late: a process that lives microseconds is
// gone by then, one that lives a millisecond is not. See docs/procmon.md
// ("Exec path").
const (
	execBatchRate = 2000
	execBatchWait = 150 * time.Microsecond
)

// execPace keeps the moving average of the time between the exec path's
// wake-ups.
type execPace struct {
	last time.Time
	avg  time.Duration // exponential moving average, weight 1/8
}

// fast records a wake-up at now and says whether they come faster than
// execBatchRate.
func (p *execPace) fast(now time.Time) bool {
	if !p.last.IsZero() {
		p.avg += (now.Sub(p.last) - p.avg) / 8
	} else {
		p.avg = time.Second
	}
	p.last = now
	return p.avg < time.Second/execBatchRate
}

// rawSleep sleeps d without the Go scheduler (the goroutine keeps its P,
// as in cnproc.Conn.WaitRaw).
func rawSleep(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	for {
		_, _, errno := unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), uintptr(unsafe.Pointer(&ts)), 0)
		if errno != unix.EINTR {
			return
		}
	}
}

// reaped says whether process pid is gone and reaped, by kill(pid, 0): a
// pid hash lookup instead of a /proc path walk that would fail the same
// way. At 5,000 execs/s of a microsecond process most execs are reaped
// before the exec path gets to them.
func reaped(pid int32) bool {
	_, _, errno := unix.RawSyscall(unix.SYS_KILL, uintptr(pid), 0, 0)
	return errno == unix.ESRCH
}

// rawWaiter is a source that can wait without the scheduler (a
// *cnproc.Conn).
type rawWaiter interface {
	WaitRaw(time.Duration) bool
	ReadNow() ([]byte, error)
}

// addPrefetched appends the fields the exec path read and sets the facts
// the detections use.
func (w *worker) addPrefetched(f []sdk.Field, s *pfSlot) []sdk.Field {
	w.facts.haveExe, w.facts.exe, w.facts.cmdline = true, s.exe, s.cmdline
	f = append(f, sdk.String("exe", str(s.exe)), sdk.String("cmdline", str(s.cmdline)))
	if s.haveCwd {
		f = append(f, sdk.String("cwd", str(s.cwd)))
	}
	if s.haveFDs {
		w.facts.stdin, w.facts.stdout = s.stdin, s.stdout
		f = append(f, sdk.String("stdin", str(s.stdin)), sdk.String("stdout", str(s.stdout)))
	}
	return f
}
