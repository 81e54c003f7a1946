package sdktest

import (
	"fmt"
	"time"
)

// Done is closed when the Run stream has ended, by Stop or because the
// plugin's Run returned. It is nil before Start.
func (h *Harness) Done() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.done
}

// RunErr returns how the Run stream ended: nil for a clean end or a
// cancel by Stop, else the plugin's error as an *RPCError.
func (h *Harness) RunErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.runErr
}

// Events returns a copy of every event received so far.
func (h *Harness) Events() []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Event(nil), h.events...)
}

// Received returns how many events have arrived.
func (h *Harness) Received() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.events)
}

// Batches returns how many batches have arrived, counting the empty ones
// that carry only counters.
func (h *Harness) Batches() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.batches
}

// Emitted returns the plugin's cumulative emitted total, as of the last
// batch.
func (h *Harness) Emitted() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.emitted
}

// Dropped returns the plugin's cumulative drops, all reasons, as of the
// last batch.
func (h *Harness) Dropped() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var n uint64
	for _, d := range h.dropped {
		n += d
	}
	return n
}

// DroppedBy returns the cumulative drops by reason, as of the last batch.
func (h *Harness) DroppedBy() map[string]uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return copyMap(h.dropped)
}

// Counters returns the plugin's counters as of the last batch.
func (h *Harness) Counters() map[string]uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return copyMap(h.counters)
}

func copyMap(m map[string]uint64) map[string]uint64 {
	c := make(map[string]uint64, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// WaitEvents waits until at least n received events match pred (nil
// matches all) and returns the matching ones. It fails the test after
// timeout, or if the stream ends first.
func (h *Harness) WaitEvents(pred func(Event) bool, n int, timeout time.Duration) []Event {
	h.t.Helper()
	var got []Event
	ok := h.wait(timeout, func() bool {
		got = got[:0]
		for _, e := range h.events {
			if pred == nil || pred(e) {
				got = append(got, e)
			}
		}
		return len(got) >= n
	})
	if !ok {
		h.t.Fatalf("sdktest: waited %v for %d matching events, got %d (of %d received; run error: %v)", timeout, n, len(got), h.Received(), h.RunErr())
	}
	return got
}

// WaitFor waits until cond returns true, checking each time a batch
// arrives (and every 10ms), and fails the test with what after timeout.
// cond may call the Harness's methods.
func (h *Harness) WaitFor(what string, timeout time.Duration, cond func() bool) {
	h.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		h.mu.Lock()
		ch := h.changed
		h.mu.Unlock()
		select {
		case <-ch:
		case <-tick.C:
		case <-deadline.C:
			if cond() {
				return
			}
			h.t.Fatalf("sdktest: waited %v for %s (received %d, emitted %d, dropped %d, run error: %v)",
				timeout, what, h.Received(), h.Emitted(), h.Dropped(), h.RunErr())
		}
	}
}

// Settle waits until the plugin's totals account for every event:
// Emitted() == Received() + Dropped() with at least minEmitted emitted,
// while the plugin keeps running. (After Stop the totals settle too, since
// Shutdown flushes the plugin's queue onto the stream.)
func (h *Harness) Settle(minEmitted uint64, timeout time.Duration) {
	h.t.Helper()
	h.WaitFor(fmt.Sprintf("emitted >= %d and emitted == received + dropped", minEmitted), timeout, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		var d uint64
		for _, n := range h.dropped {
			d += n
		}
		return h.emitted >= minEmitted && h.emitted == uint64(len(h.events))+d
	})
}

// wait calls cond under the lock until it is true, the stream ends, or
// timeout passes.
func (h *Harness) wait(timeout time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		if cond() {
			h.mu.Unlock()
			return true
		}
		ch, done := h.changed, h.done
		h.mu.Unlock()
		if done != nil {
			select {
			case <-done:
				h.mu.Lock()
				ok := cond()
				h.mu.Unlock()
				return ok
			default:
			}
		}
		select {
		case <-ch:
		case <-deadline.C:
			return false
		}
	}
}
