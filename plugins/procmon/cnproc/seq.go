package cnproc

// maxCPUs bounds the tracker's table; a CPU number beyond it (a corrupt
// message) is not tracked rather than growing memory.
const maxCPUs = 8192

// SeqTracker turns the per-CPU sequence numbers of cn_proc messages into an
// exact count of events the kernel emitted but this socket never received
// (socket overruns, and allocation failures in the kernel's atomic send).
// The kernel numbers the events of each CPU 0, 1, 2, ... while anyone
// listens, and one CPU's events reach the socket in order, so a jump from n
// to n+k on a CPU means k-1 events lost.
//
// The first event seen on a CPU sets its baseline. A tracker kept across
// reconnects also counts what was missed while disconnected. It is not safe
// for concurrent use: the one socket reader owns it.
type SeqTracker struct {
	last []uint32
	seen []bool
}

// Observe records ev's sequence number and returns how many events of its
// CPU were lost just before it. Feed it every message, acknowledgements
// included: since Linux 5.x the kernel sends the acknowledgement of any
// socket's (un)subscription to every listener through the same numbered
// path, so it takes a sequence number like an event. An old-style
// acknowledgement (CPU all ones) is not numbered and is ignored.
func (t *SeqTracker) Observe(ev *Event) uint64 {
	if ev.CPU >= maxCPUs {
		return 0
	}
	cpu := int(ev.CPU)
	if cpu >= len(t.last) {
		n := max(cpu+1, 2*len(t.last), 8)
		n = min(n, maxCPUs)
		last := make([]uint32, n)
		seen := make([]bool, n)
		copy(last, t.last)
		copy(seen, t.seen)
		t.last, t.seen = last, seen
	}
	prev, seen := t.last[cpu], t.seen[cpu]
	t.last[cpu], t.seen[cpu] = ev.Seq, true
	if !seen {
		return 0
	}
	gap := ev.Seq - prev // wraps correctly at 2^32
	if gap == 0 || gap >= 1<<31 {
		// A repeat or a step back: the kernel's counter cannot do this
		// while we listen, so it restarted (no listeners for a while)
		// or the message is corrupt. Take it as the new baseline.
		return 0
	}
	return uint64(gap - 1)
}

// Forget drops every baseline, e.g. after the kernel may have stopped
// numbering (no listener at all for a while).
func (t *SeqTracker) Forget() {
	clear(t.seen)
}
