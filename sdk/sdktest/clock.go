package sdktest

import (
	"context"
	"sync"
	"time"
)

// FakeClock is an sdk.Clock for tests: Sleep returns at once, moving the
// clock forward by the time asked for and recording it, so a test of a
// backoff or a Guard runs in microseconds and can assert the delays.
type FakeClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
	onWake func(n int)
}

// NewFakeClock returns a fake clock set to start.
func NewFakeClock(start time.Time) *FakeClock { return &FakeClock{now: start} }

// Now returns the fake time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the fake time forward by d.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Sleep records d, advances the clock by it and returns at once, or returns
// ctx.Err() if ctx is already done.
func (c *FakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d)
	n, wake := len(c.sleeps), c.onWake
	c.mu.Unlock()
	if wake != nil {
		wake(n)
	}
	return ctx.Err()
}

// OnSleep sets a function called after each Sleep with the number of
// sleeps so far, e.g. to cancel a context after the n-th retry.
func (c *FakeClock) OnSleep(f func(n int)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onWake = f
}

// Sleeps returns the durations slept so far, in order.
func (c *FakeClock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}
