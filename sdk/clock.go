package sdk

import (
	"sync"
	"sync/atomic"
	"time"
)

// CoarseClock is a clock read from memory and refreshed by one goroutine
// every resolution, so a plugin emitting hundreds of thousands of events a
// second does not pay a clock read per event (the original design measured
// time.Now as a visible share of a busy agent's CPU). Its readings lag the
// real time by at most one resolution.
type CoarseClock struct {
	now  atomic.Int64
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// Coarse clock resolution bounds.
const (
	MinCoarseResolution = 100 * time.Millisecond
	MaxCoarseResolution = time.Second
)

// NewCoarseClock starts a coarse clock refreshed every resolution, which is
// clamped to [MinCoarseResolution, MaxCoarseResolution]. Stop it with Stop.
func NewCoarseClock(resolution time.Duration) *CoarseClock {
	resolution = min(max(resolution, MinCoarseResolution), MaxCoarseResolution)
	c := &CoarseClock{stop: make(chan struct{}), done: make(chan struct{})}
	c.now.Store(time.Now().UnixNano())
	go func() {
		defer close(c.done)
		t := time.NewTicker(resolution)
		defer t.Stop()
		for {
			select {
			case <-c.stop:
				return
			case now := <-t.C:
				c.now.Store(now.UnixNano())
			}
		}
	}()
	return c
}

// UnixNano returns the coarse time in Unix nanoseconds.
func (c *CoarseClock) UnixNano() int64 { return c.now.Load() }

// Now returns the coarse time.
func (c *CoarseClock) Now() time.Time { return time.Unix(0, c.now.Load()) }

// Stop stops the refreshing goroutine and waits for it. It is idempotent.
func (c *CoarseClock) Stop() {
	c.once.Do(func() { close(c.stop) })
	<-c.done
}
