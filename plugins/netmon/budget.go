package netmon

import (
	"time"

	"golang.org/x/sys/unix"
)

// budget bounds the work of one snapshot: CPU time of the snapshot's
// thread (the goroutine is locked to it for the snapshot, so system time
// spent by the kernel walking its socket tables counts too) and a number of
// /proc fd links for attribution.
type budget struct {
	start     time.Duration
	limit     time.Duration
	fds       int
	exhausted bool
}

func newBudget(limit time.Duration, fds int) *budget {
	return &budget{start: threadCPU(), limit: limit, fds: fds}
}

// threadCPU returns the CPU time used by the calling thread.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// used returns the CPU time used so far.
func (b *budget) used() time.Duration { return threadCPU() - b.start }

// overCPU reports whether the CPU budget is spent; once it is, it stays so.
func (b *budget) overCPU() bool {
	if !b.exhausted && b.used() >= b.limit {
		b.exhausted = true
	}
	return b.exhausted
}

// spent reports whether either budget is spent.
func (b *budget) spent() bool { return b.fds <= 0 || b.overCPU() }
