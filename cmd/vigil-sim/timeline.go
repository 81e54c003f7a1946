package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ackTimeline tells where the time of a fleet-wide change goes, from three
// clocks: when each host wrote its acknowledgement (the UpdatedAt of the
// value, set just before the write), how many acknowledgements the cell
// had applied (writes after the change's revision, from the header of a
// serializable read every 250 ms on one member; the acknowledgements are
// nearly all the writes then), and when the observer's
// prefix watch delivered them. Hosts writing late point at the fan-out or
// the hosts; applied late, at the cell; delivered late, at the watch.
type ackTimeline struct {
	t0   time.Time
	mu   sync.Mutex
	sent []time.Duration
	seen []time.Duration
	size int // bytes of the values seen
	// revs[i] is the revision a member had applied at polled[i]; minus
	// the change's revision, the count of acknowledgements applied.
	polled []time.Duration
	revs   []int64
	rev    func() int64
	failed int // polls that got no answer within 2 s
	done   chan struct{}
	wg     sync.WaitGroup
}

// startTimeline polls the cell for the writes it applied after rev (the
// change's revision, once known) until stop is called; with poll false
// it does not poll (the observer process does, see addPoll).
func (s *Sim) startTimeline(ctx context.Context, t0 time.Time, rev func() int64, poll bool) *ackTimeline {
	tl := &ackTimeline{t0: t0, rev: rev, done: make(chan struct{})}
	if !poll {
		return tl
	}
	tl.wg.Add(1)
	go func() {
		defer tl.wg.Done()
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tl.done:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			r := rev()
			if r == 0 {
				continue
			}
			// A serializable read of a key nobody writes: its header is
			// the revision the member it reached has applied.
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			resp, err := s.admin.Get(rctx, probeKey, clientv3.WithSerializable())
			cancel()
			if err != nil {
				tl.mu.Lock()
				tl.failed++
				tl.mu.Unlock()
				continue
			}
			tl.addPoll(time.Since(t0), resp.Header.Revision)
		}
	}()
	return tl
}

// addPoll notes that a member had applied revision rev at the time at
// (from t0).
func (tl *ackTimeline) addPoll(at time.Duration, rev int64) {
	tl.mu.Lock()
	tl.polled = append(tl.polled, at)
	tl.revs = append(tl.revs, rev)
	tl.mu.Unlock()
}

// addFailed counts n polls not answered within 2 s.
func (tl *ackTimeline) addFailed(n int) {
	tl.mu.Lock()
	tl.failed += n
	tl.mu.Unlock()
}

// record notes one host's acknowledgement as delivered to the observer.
func (tl *ackTimeline) record(e agentEvent) {
	if tl == nil {
		return
	}
	tl.mu.Lock()
	tl.sent = append(tl.sent, e.reg.UpdatedAt.Sub(tl.t0))
	tl.seen = append(tl.seen, e.at.Sub(tl.t0))
	tl.size += e.size
	tl.mu.Unlock()
}

// stop ends the polling and describes the timeline in one line.
func (tl *ackTimeline) stop() string {
	close(tl.done)
	tl.wg.Wait()
	tl.mu.Lock()
	defer tl.mu.Unlock()
	q := func(ds []time.Duration) string {
		if len(ds) == 0 {
			return "-"
		}
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		at := func(f float64) time.Duration { return s[min(int(f*float64(len(s))), len(s)-1)] }
		return fmt.Sprintf("min %.2f / p10 %.2f / p50 %.2f / p90 %.2f / max %.2f s",
			s[0].Seconds(), at(0.10).Seconds(), at(0.50).Seconds(), at(0.90).Seconds(), s[len(s)-1].Seconds())
	}
	var b strings.Builder
	if len(tl.seen) > 0 {
		fmt.Fprintf(&b, "acknowledgement values %d bytes on average; ", tl.size/len(tl.seen))
	}
	fmt.Fprintf(&b, "timeline: hosts wrote their acks at %s; observer's watch delivered them at %s; writes applied after the change (a member, polled every 250 ms):", q(tl.sent), q(tl.seen))
	var last int64 = -1
	var gap, prev time.Duration
	r := tl.rev()
	for i, rv := range tl.revs {
		n := max(0, rv-r)
		gap = max(gap, tl.polled[i]-prev)
		prev = tl.polled[i]
		if n != last {
			fmt.Fprintf(&b, " %.2fs=%d", tl.polled[i].Seconds(), n)
			last = n
		}
	}
	fmt.Fprintf(&b, " (%d polls answered, %d not within 2 s, longest time without an answer %.2f s)", len(tl.revs), tl.failed, gap.Seconds())
	return b.String()
}
