package procmon

import (
	"sync"

	"github.com/vigil-hids/vigil/plugins/procmon/cnproc"
)

// evQueue is one worker's bounded queue. The reader pushes events one by
// one under a mutex and wakes the worker once per socket read, not once
// per event; the worker takes everything queued in one go. Under an exec
// storm this turns tens of thousands of goroutine wake-ups a second into a
// few hundred.
//
// The ring starts small and doubles when it fills, up to size: workers
// that keep up never need more than a batch's worth, so the memory of a
// full queue is only taken by a host that needed it.
type evQueue struct {
	mu   sync.Mutex
	ring []cnproc.Event
	size int // the most events queued
	head int
	n    int
	// highWater is the fill level above which only exec events are
	// accepted: detections come from execs, so they are dropped last.
	highWater int
	wake      chan struct{}
	pushed    bool // since the last wake
}

// evQueueStart is the ring's initial length.
const evQueueStart = 256

func newEvQueue(size int) *evQueue {
	return &evQueue{ring: make([]cnproc.Event, min(size, evQueueStart)), size: size, highWater: size - size/8,
		wake: make(chan struct{}, 1)}
}

// push queues ev, or reports false if the queue is full for its kind.
func (q *evQueue) push(ev *cnproc.Event) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == q.size || (ev.What != cnproc.Exec && q.n >= q.highWater) {
		return false
	}
	if q.n == len(q.ring) {
		q.grow()
	}
	q.ring[(q.head+q.n)%len(q.ring)] = *ev
	q.n++
	q.pushed = true
	return true
}

// grow doubles the ring (up to size), keeping the queued events in order.
func (q *evQueue) grow() {
	ring := make([]cnproc.Event, min(2*len(q.ring), q.size))
	k := copy(ring, q.ring[q.head:])
	copy(ring[k:], q.ring[:q.head])
	q.ring, q.head = ring, 0
}

// signal wakes the worker if anything was pushed since the last signal.
func (q *evQueue) signal() {
	q.mu.Lock()
	pushed := q.pushed
	q.pushed = false
	q.mu.Unlock()
	if pushed {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// take moves every queued event to dst[:0] and returns it.
func (q *evQueue) take(dst []cnproc.Event) []cnproc.Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	dst = dst[:0]
	for q.n > 0 {
		end := min(q.head+q.n, len(q.ring))
		dst = append(dst, q.ring[q.head:end]...)
		q.n -= end - q.head
		q.head = end % len(q.ring)
	}
	q.head = 0
	return dst
}

func (q *evQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}
