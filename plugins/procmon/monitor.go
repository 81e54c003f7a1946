package procmon

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	hclog "github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/vigil-hids/vigil/plugins/procmon/cnproc"
	"github.com/vigil-hids/vigil/sdk"
)

// Counter names reported to the host with every batch. Together they
// account for every kernel event: received = enqueued + queue drops +
// ignored, and the kernel's own losses are counted from sequence gaps.
const (
	// CounterReceived counts process events read from the socket.
	CounterReceived = "events_received"
	// CounterExecReceived counts exec events read from the socket.
	CounterExecReceived = "exec_received"
	// CounterOverruns counts ENOBUFS errors: the socket's buffer overflowed
	// and the kernel dropped messages.
	CounterOverruns = "kernel_overruns"
	// CounterKernelLost is the exact number of events the kernel emitted
	// that never reached the socket, from gaps in the per-CPU sequence.
	CounterKernelLost = "kernel_events_lost"
	// CounterQueueDropped counts events dropped because the workers'
	// queue was full; CounterQueueDroppedExec is the exec share of it.
	CounterQueueDropped     = "queue_dropped"
	CounterQueueDroppedExec = "queue_dropped_exec"
	// CounterExecGone counts exec events whose process was gone before
	// /proc could be read (emitted with what the kernel event says).
	CounterExecGone = "exec_proc_gone"
	// CounterExecPrefetched counts exec events that carry what the exec
	// path read the moment the exec arrived (see prefetch.go).
	CounterExecPrefetched = "exec_prefetched"
	// CounterExecEmitted counts exec events handed to the emitter.
	CounterExecEmitted = "exec_emitted"
	// CounterAlerts counts alerts emitted.
	CounterAlerts = "alerts"
	// CounterDecodeErrors counts messages that did not decode.
	CounterDecodeErrors = "decode_errors"
	// CounterReconnects counts reopenings of the socket after an error.
	CounterReconnects = "reconnects"
	// CounterClockSteps counts steps of the wall clock relative to the
	// kernel's event clock that event times were adjusted to (wallclock.go).
	CounterClockSteps = "clock_steps"
)

// ErrClosed is returned by Start on a closed context.
var ErrClosed = errors.New("procmon: monitor closed")

// Deps are what a Monitor uses from its owner.
type Deps struct {
	// Log receives the monitor's logs.
	Log hclog.Logger
	// Emitter receives events and holds the counters.
	Emitter sdk.Emitter
	// Clock paces reconnection backoff; nil means the system clock.
	Clock sdk.Clock
	// Seq carries the kernel sequence baselines across monitors, so
	// events lost while a monitor was being replaced are counted too.
	// Nil gives the monitor a tracker of its own.
	Seq *cnproc.SeqTracker
	// ProcRoot is where proc is mounted; "" means /proc.
	ProcRoot string
	// Dial opens a socket (the main one, or with o.ExecOnly the exec
	// path's); nil means cnproc.DialOptions. Tests replace it to inject
	// socket errors.
	Dial func(o cnproc.Options) (EventSource, error)
	// Seed seeds the reconnect jitter (the host name); may be "".
	Seed string
	// KernelClock reads the clocks that event times are converted with;
	// nil means the system's. Tests replace it to step the wall clock.
	KernelClock KernelClock
}

// EventSource is a subscribed cn_proc socket (a *cnproc.Conn).
type EventSource interface {
	// Read returns the datagrams waiting, waiting for one unless the
	// socket was detached from the poller (then it may return none).
	Read() ([]byte, error)
	// More says whether the last Read may have left datagrams waiting.
	More() bool
	Close() error
}

// detacher is a source that can be taken out of the runtime's poller.
type detacher interface{ Detach() error }

func dialKernel(o cnproc.Options) (EventSource, error) { return cnproc.DialOptions(o) }

// counters are the monitor's counters, fetched once.
type counters struct {
	received, execReceived, overruns, kernelLost, queueDropped, queueDroppedExec,
	execGone, execPrefetched, execEmitted, alerts, decodeErrors, reconnects, clockSteps *sdk.Counter
}

func newCounters(em sdk.Emitter) counters {
	return counters{
		received: em.Counter(CounterReceived), execReceived: em.Counter(CounterExecReceived),
		overruns: em.Counter(CounterOverruns), kernelLost: em.Counter(CounterKernelLost),
		queueDropped: em.Counter(CounterQueueDropped), queueDroppedExec: em.Counter(CounterQueueDroppedExec),
		execGone: em.Counter(CounterExecGone), execEmitted: em.Counter(CounterExecEmitted),
		execPrefetched: em.Counter(CounterExecPrefetched),
		alerts:         em.Counter(CounterAlerts), decodeErrors: em.Counter(CounterDecodeErrors),
		reconnects: em.Counter(CounterReconnects), clockSteps: em.Counter(CounterClockSteps),
	}
}

// Monitor reads the kernel's process events and turns them into enriched
// telemetry and alerts. One reader goroutine only reads, decodes, counts
// and enqueues; workers behind bounded queues read /proc, run the
// detections and emit. Events of one process always go to the same worker,
// in order.
type Monitor struct {
	cfg   *Config
	deps  Deps
	log   hclog.Logger
	c     counters
	emit  cnproc.What
	det   *detector
	table *procTable
	clock *wallClock

	queues []*evQueue
	// pre is the table the exec path (exec_prefetch) fills; nudge is its
	// signal to the main reader that an exec came on a quiet host.
	pre   *prefetchTable
	nudge chan struct{}
	// quiet: the timed reader's interval has grown past read_coalesce.
	quiet atomic.Bool
	// timed: the main socket is out of the poller and read on a timer.
	timed bool

	cancel context.CancelFunc
	guard  *sdk.Guard
	ready  chan struct{}
	errc   chan error

	mu     sync.Mutex
	src    EventSource
	xsrc   EventSource // the exec path's socket
	closed bool
	once   sync.Once
}

// Start validates cfg, opens and subscribes the socket, and starts the
// reader and workers. A socket that cannot be opened at all (no
// CAP_NET_ADMIN, no connector in the kernel) is an error here; later socket
// errors are retried with backoff for as long as the monitor runs.
func Start(ctx context.Context, cfg *Config, deps Deps) (*Monitor, error) {
	if err := sdk.DecodeConfig(Name, nil, cfg); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrClosed, err)
	}
	if deps.Log == nil {
		deps.Log = hclog.NewNullLogger()
	}
	if deps.Clock == nil {
		deps.Clock = sdk.SystemClock()
	}
	if deps.Seq == nil {
		deps.Seq = &cnproc.SeqTracker{}
	}
	if deps.ProcRoot == "" {
		deps.ProcRoot = "/proc"
	}
	if deps.Dial == nil {
		deps.Dial = dialKernel
	}
	m := &Monitor{
		cfg:   cfg,
		deps:  deps,
		log:   deps.Log.Named("monitor"),
		c:     newCounters(deps.Emitter),
		emit:  cfg.emitMask(),
		det:   newDetector(&cfg.Detections),
		table: newProcTable(cfg.ProcessTableSize),
		ready: make(chan struct{}),
		errc:  make(chan error, 1),
	}
	m.clock = newWallClock(deps.KernelClock, m.c.clockSteps, m.log)
	per := max(cfg.QueueSize/cfg.Workers, 64)
	m.queues = make([]*evQueue, cfg.Workers)
	for i := range m.queues {
		m.queues[i] = newEvQueue(per)
	}
	m.timed = cfg.ExecPrefetch && cfg.ReadCoalesce > 0
	src, err := m.dial(false)
	if err != nil {
		return nil, fmt.Errorf("procmon: opening the process events socket: %w", err)
	}
	m.src = src
	if c, ok := src.(*cnproc.Conn); ok {
		n, forced := c.RcvBuf()
		m.log.Info("subscribed to kernel process events", "receive_buffer", n, "forced", forced,
			"workers", cfg.Workers, "queue_size", cfg.QueueSize, "exec_prefetch", cfg.ExecPrefetch)
	}
	if cfg.ExecPrefetch {
		m.pre = &prefetchTable{}
		m.nudge = make(chan struct{}, 1)
		if m.xsrc, err = m.dial(true); err != nil {
			_ = src.Close()
			return nil, fmt.Errorf("procmon: opening the exec socket: %w", err)
		}
	}
	gctx, cancel := context.WithCancel(ctx)
	m.cancel = cancel
	m.guard = sdk.NewGuard(gctx, m.log, deps.Emitter, sdk.GuardOptions{Seed: deps.Seed + "/procmon"})
	for i := range m.queues {
		q := m.queues[i]
		m.guard.Go(fmt.Sprintf("worker-%d", i), func(ctx context.Context) error { return m.work(ctx, q) })
	}
	if m.timed {
		m.guard.Go("reader", m.readTimed)
	} else {
		m.guard.Go("reader", m.read)
	}
	if m.xsrc != nil {
		m.guard.Go("exec-path", m.execPath)
	}
	close(m.ready)
	return m, nil
}

// Socket sizes. A read of the main socket gathers up to 128 datagrams
// (readBufSize / mmsgSlotSize × 2 rounds); the exec socket keeps the
// system's default buffer: it is lossy by design, and an exec it holds for
// long is not worth reading any more.
const (
	readBufSize     = 64 << 10
	execReadBufSize = 32 << 10
)

// dial opens the main socket, or the exec path's, detaching the main one
// from the poller when it is read on a timer.
func (m *Monitor) dial(execOnly bool) (EventSource, error) {
	o := cnproc.Options{RcvBuf: m.cfg.ReceiveBuffer, BufSize: readBufSize}
	if execOnly {
		o = cnproc.Options{BufSize: execReadBufSize, ExecOnly: true}
	}
	src, err := m.deps.Dial(o)
	if err != nil || execOnly || !m.timed {
		return src, err
	}
	if d, ok := src.(detacher); ok {
		if err := d.Detach(); err != nil {
			_ = src.Close()
			return nil, err
		}
	}
	return src, nil
}

// Ready is closed once the socket is subscribed.
func (m *Monitor) Ready() <-chan struct{} { return m.ready }

// Err is closed when the monitor has stopped. Nothing but Close stops it:
// socket errors are retried with backoff and worker panics restart the
// worker, so no error is ever sent; the channel exists so an owner can
// select on a monitor like on any other component.
func (m *Monitor) Err() <-chan error { return m.errc }

// Close stops the reader and the workers and waits for them. Events still
// queued are dropped (the workers stop with the context). It is idempotent.
func (m *Monitor) Close() error {
	m.once.Do(func() {
		m.cancel()
		m.mu.Lock()
		m.closed = true
		if m.src != nil {
			_ = m.src.Close()
		}
		if m.xsrc != nil {
			_ = m.xsrc.Close()
		}
		m.mu.Unlock()
		m.guard.Wait()
		close(m.errc)
	})
	return nil
}

// read is the reader: it never blocks on anything but the socket. After
// each read it pauses for read_coalesce, so that under load each read
// drains a batch and each worker wakes once per batch; the socket buffer
// holds the events meanwhile.
func (m *Monitor) read(ctx context.Context) error {
	var ev cnproc.Event
	coalesce := m.cfg.ReadCoalesce.D()
	// A read's size in bytes from which the reader counts as busy and
	// pauses: cn_proc messages are 76 bytes (40 for an acknowledgement).
	coalesceAbove := m.cfg.ReadCoalesceAfter * 76
	busy := false
	for {
		if busy && coalesce > 0 {
			pause(coalesce)
		}
		m.mu.Lock()
		src := m.src
		m.mu.Unlock()
		b, err := src.Read()
		if err != nil {
			if closing, _ := m.readFailed(ctx, err); closing {
				return nil
			}
			continue
		}
		// Under load (many messages per read) pause before the next read;
		// a quiet socket is read at once, so a short-lived process's exec
		// reaches a worker while /proc still has it.
		busy = len(b) >= coalesceAbove
		m.handleRead(b, &ev)
		m.signal()
	}
}

// readFailed handles a failed read of the main socket: an overrun
// (ENOBUFS) is counted and reading goes on; any other error reopens the
// socket, with backoff. closing reports that the monitor is closing (the
// reader returns), reopened that the socket was replaced.
func (m *Monitor) readFailed(ctx context.Context, err error) (closing, reopened bool) {
	if ctx.Err() != nil {
		return true, false
	}
	if errors.Is(err, unix.ENOBUFS) {
		m.c.overruns.Add(1)
		return false, false
	}
	m.log.Warn("reading process events failed, reopening the socket", "error", err)
	if err := m.reconnect(ctx, false); err != nil {
		return true, false // closed
	}
	return false, true
}

// handleRead decodes, counts and dispatches one read's messages.
func (m *Monitor) handleRead(b []byte, ev *cnproc.Event) {
	for len(b) > 0 {
		n, err := cnproc.Decode(b, ev)
		b = b[n:]
		if err != nil {
			m.c.decodeErrors.Add(1)
			continue
		}
		// Acknowledgements of other sockets' subscriptions take
		// sequence numbers too, so they are observed before skipped.
		if lost := m.deps.Seq.Observe(ev); lost > 0 {
			m.c.kernelLost.Add(lost)
		}
		if ev.What == cnproc.None {
			continue
		}
		m.c.received.Add(1)
		m.dispatch(ev)
	}
}

// The timed reader's pacing: a read that finds fewer than idleBelow
// messages (of msgSize bytes) doubles the interval, up to maxInterval.
const (
	idleBelow   = 8
	msgSize     = 76
	maxInterval = 100 * time.Millisecond
)

// signal wakes the workers that were handed events.
func (m *Monitor) signal() {
	for _, q := range m.queues {
		q.signal()
	}
}

// readTimed is the reader when the exec path runs: the main socket is out
// of the runtime's poller (see cnproc.Conn.Detach), so its datagrams wake
// nothing. It is drained every read_coalesce while reads find events
// (at least idleBelow messages), at intervals doubling up to maxInterval
// while they find fewer, and at once when the exec path nudges it (an
// exec while the interval is grown, i.e. a quiet host). A timer wake-up
// costs the poller thread and the runtime's monitor thread a wake-up
// each, which on a quiet host is most of the plugin's CPU. Like read, it
// never touches /proc and never waits on a worker.
func (m *Monitor) readTimed(ctx context.Context) error {
	var ev cnproc.Event
	base := m.cfg.ReadCoalesce.D()
	interval := base
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.nudge:
		case <-t.C:
		}
		got := 0
		m.mu.Lock()
		src := m.src
		m.mu.Unlock()
		for {
			b, err := src.Read()
			if err != nil {
				closing, reopened := m.readFailed(ctx, err)
				if closing {
					return nil
				}
				if reopened {
					break
				}
				continue
			}
			got += len(b)
			m.handleRead(b, &ev)
			if !src.More() {
				break
			}
		}
		m.signal()
		if got >= idleBelow*msgSize {
			interval = base
		} else {
			interval = min(2*interval, max(base, maxInterval))
		}
		m.quiet.Store(interval > base)
		t.Reset(interval)
	}
}

// rawPauseMax is the longest pause taken by pause without the scheduler.
const rawPauseMax = 5 * time.Millisecond

// pause lets the socket fill for d. The socket is in the Go runtime's
// poller, and a thread waiting in the poller (as one does while this
// goroutine sleeps on a timer) is woken by every datagram that arrives:
// under a storm a timer sleep saves reads but not wake-ups. So the workers
// are let run first (they were just handed a batch), and then a short pause
// is a plain nanosleep that keeps this goroutine's P, so that no thread
// waits in the poller meanwhile. It holds up the rest of the process (and
// a garbage collection) for at most rawPauseMax; longer pauses sleep on a
// timer.
func pause(d time.Duration) {
	if d > rawPauseMax {
		time.Sleep(d)
		return
	}
	runtime.Gosched()
	ts := unix.NsecToTimespec(int64(d))
	unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
}

// dispatch queues ev for its process's worker. Exec events may use the
// whole queue; other events only up to a high-water mark, so that under
// overload the events detections need are the last to go.
func (m *Monitor) dispatch(ev *cnproc.Event) {
	isExec := ev.What == cnproc.Exec
	if isExec {
		m.c.execReceived.Add(1)
	}
	switch {
	case isExec:
	case ev.What == cnproc.Exit:
		if ev.PID != ev.TGID { // a thread, not the process
			return
		}
	case ev.What&m.emit == 0:
		return // not wanted
	case ev.What == cnproc.Fork && ev.PID != ev.TGID:
		return // a new thread
	}
	q := m.queues[uint32(ev.TGID)%uint32(len(m.queues))]
	if !q.push(ev) {
		m.c.queueDropped.Add(1)
		if isExec {
			m.c.queueDroppedExec.Add(1)
		}
	}
}

// reconnect reopens the main socket (or the exec path's) with capped,
// jittered backoff until it works or the monitor is closed. Only the main
// socket's reopenings are counted: the exec path counts nothing.
func (m *Monitor) reconnect(ctx context.Context, execOnly bool) error {
	cur, name := &m.src, "process events socket"
	if execOnly {
		cur, name = &m.xsrc, "exec socket"
	}
	m.mu.Lock()
	if *cur != nil {
		_ = (*cur).Close()
	}
	m.mu.Unlock()
	b := sdk.NewBackoff(m.deps.Seed+"/procmon/"+name, m.cfg.ReconnectMin.D(), m.cfg.ReconnectMax.D())
	b.Clock = m.deps.Clock
	return sdk.Retry(ctx, b, func(ctx context.Context) error {
		src, err := m.dial(execOnly)
		if err != nil {
			m.log.Warn("reopening the "+name+" failed", "error", err)
			return err
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.closed {
			_ = src.Close()
			return sdk.Permanent(ErrClosed)
		}
		*cur = src
		if !execOnly {
			m.c.reconnects.Add(1)
		}
		m.log.Info(name + " reopened")
		return nil
	})
}
