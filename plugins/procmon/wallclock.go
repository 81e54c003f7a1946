package procmon

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/vigil-hids/vigil/sdk"
)

// Wall clock tracking. The kernel stamps each cn_proc event with
// ktime_get_ns() (drivers/connector/cn_proc.c), which is CLOCK_MONOTONIC:
// it does not follow steps of the wall clock (settimeofday, an NTP step, a
// leap second) and stands still while the machine is suspended. Event times
// are the timestamp plus an offset (CLOCK_REALTIME − CLOCK_MONOTONIC), and
// that offset is re-taken at most once a second of event time, from the
// event path itself: the check is one comparison of the event's own
// timestamp with the time of the next check, so the event path reads no
// clock of its own.
const (
	// clockCheckEvery is how often, in event time, the offsets are re-taken.
	clockCheckEvery = int64(time.Second)
	// clockTolerance is the change of offset below which the old one is
	// kept (measurement noise is microseconds).
	clockTolerance = int64(time.Millisecond)
	// clockMaxGap is the longest the two CLOCK_MONOTONIC reads around a
	// sample may be apart for the sample to be used: a sample taken
	// across a preemption is not trusted.
	clockMaxGap = clockTolerance / 4
	// clockWarnStep is the step size logged at warn.
	clockWarnStep = int64(time.Second)
)

// KernelClock reads CLOCK_REALTIME, CLOCK_MONOTONIC and CLOCK_BOOTTIME at
// one instant, in nanoseconds. ok is false when the sample is not precise
// enough to be trusted.
type KernelClock func() (wall, mono, boot int64, ok bool)

// readKernelClock is the system KernelClock: of three samples, each a
// CLOCK_MONOTONIC read on either side of the others, it keeps the one whose
// monotonic reads are closest together.
func readKernelClock() (wall, mono, boot int64, ok bool) {
	best := int64(math.MaxInt64)
	for range 3 {
		var m1, w, b, m2 unix.Timespec
		if unix.ClockGettime(unix.CLOCK_MONOTONIC, &m1) != nil || unix.ClockGettime(unix.CLOCK_REALTIME, &w) != nil ||
			unix.ClockGettime(unix.CLOCK_BOOTTIME, &b) != nil || unix.ClockGettime(unix.CLOCK_MONOTONIC, &m2) != nil {
			break
		}
		if gap := m2.Nano() - m1.Nano(); gap < best {
			best = gap
			wall, mono, boot = w.Nano(), m1.Nano()+gap/2, b.Nano()
		}
	}
	if best == math.MaxInt64 { // the clocks could not be read at all
		now := time.Now().UnixNano()
		return now, 0, 0, false
	}
	return wall, mono, boot, best <= clockMaxGap
}

// wallClock converts kernel times to wall-clock times and follows steps of
// the wall clock. It is shared by the workers.
type wallClock struct {
	read KernelClock
	// next is the event time (CLOCK_MONOTONIC ns) at or after which the
	// next event re-takes the offsets.
	next atomic.Int64
	// monoToWall is added to CLOCK_MONOTONIC ns to get Unix ns.
	monoToWall atomic.Int64
	// bootWall is the Unix ns of boot (CLOCK_BOOTTIME zero).
	bootWall atomic.Int64

	mu    sync.Mutex // held while re-taking the offsets
	steps *sdk.Counter
	log   hclog.Logger
}

// newWallClock takes the offsets from read (nil: the system clocks),
// counting later steps in steps and logging them to log (either may be nil).
func newWallClock(read KernelClock, steps *sdk.Counter, log hclog.Logger) *wallClock {
	if read == nil {
		read = readKernelClock
	}
	if steps == nil {
		steps = &sdk.Counter{}
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	c := &wallClock{read: read, steps: steps, log: log}
	wall, mono, boot, _ := read() // imprecise or not, it is the best there is
	c.monoToWall.Store(wall - mono)
	c.bootWall.Store(wall - boot)
	c.next.Store(mono + clockCheckEvery)
	return c
}

// wall returns the Unix ns of the kernel time ts (CLOCK_MONOTONIC ns),
// re-taking the offsets first when they are due.
func (c *wallClock) wall(ts int64) int64 {
	if ts >= c.next.Load() {
		c.check(ts)
	}
	return ts + c.monoToWall.Load()
}

// boot returns the Unix ns of boot.
func (c *wallClock) boot() int64 { return c.bootWall.Load() }

// check re-takes the offsets unless another worker is doing it or has just
// done it, and adopts those that moved by more than the tolerance.
func (c *wallClock) check(ts int64) {
	if !c.mu.TryLock() {
		return // another worker is at it; this event keeps the old offset
	}
	defer c.mu.Unlock()
	if ts < c.next.Load() {
		return
	}
	wall, mono, boot, ok := c.read()
	// The event's time is normally behind mono; it is ahead only if the
	// kernel stamps events with another clock than assumed, and then this
	// still keeps the re-takes to one a second instead of one an event.
	c.next.Store(max(mono, ts) + clockCheckEvery)
	if !ok {
		return
	}
	if b := wall - boot; abs(b-c.bootWall.Load()) > clockTolerance {
		c.bootWall.Store(b)
	}
	off := wall - mono
	d := off - c.monoToWall.Load()
	if abs(d) <= clockTolerance {
		return
	}
	c.monoToWall.Store(off)
	c.steps.Add(1)
	if abs(d) > clockWarnStep {
		c.log.Warn("wall clock stepped: event times follow the new time from now on", "step", time.Duration(d).String())
	} else {
		c.log.Debug("wall clock stepped", "step", time.Duration(d).String())
	}
}

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}
