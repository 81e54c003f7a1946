package pipeline

import (
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

// Drop reasons. DropPluginBufferFull is reported by the plugin itself; the
// others are decided by the host.
const (
	// DropPluginBufferFull: the plugin's send buffer was full (counted by
	// the plugin, reported in EventBatch.dropped_total).
	DropPluginBufferFull = sdk.DropBufferFull
	// DropRateLimited: over the plugin's token bucket.
	DropRateLimited = "rate_limited"
	// DropQueueFull: the plugin's host queue was full, or telemetry was
	// evicted to make room for an alert.
	DropQueueFull = "queue_full"
	// DropSinkError: a sink failed to write the batch.
	DropSinkError = "sink_error"
	// DropMalformed: a record in the batch did not decode (a plugin bug);
	// the record and the rest of its batch are dropped.
	DropMalformed = "malformed"
	// DropPluginExit: the plugin process ended while it still held events
	// it had counted as emitted but not yet sent.
	DropPluginExit = "plugin_exit"
	// DropShutdown: still queued when Close ran out of time, or submitted
	// after Close.
	DropShutdown = "shutdown"
)

// hostReasons are the drop reasons the host decides, in a fixed order.
var hostReasons = [...]string{DropRateLimited, DropQueueFull, DropSinkError, DropMalformed, DropPluginExit, DropShutdown}

type reason int

const (
	rRateLimited reason = iota
	rQueueFull
	rSinkError
	rMalformed
	rPluginExit
	rShutdown
	nReasons
)

// entry is a run of records waiting in a lane.
type entry struct {
	recs    []byte
	n       int
	version string
}

// lane is a FIFO of entries that reuses its backing array.
type lane struct {
	q      []entry
	head   int
	events int
}

func (l *lane) len() int { return len(l.q) - l.head }

func (l *lane) push(e entry) {
	if l.head > 0 && l.head >= len(l.q)/2 && l.head >= 64 {
		n := copy(l.q, l.q[l.head:])
		clear(l.q[n:])
		l.q, l.head = l.q[:n], 0
	}
	l.q = append(l.q, e)
	l.events += e.n
}

func (l *lane) pop() entry {
	e := l.q[l.head]
	l.q[l.head] = entry{}
	l.head++
	if l.head == len(l.q) {
		l.q, l.head = l.q[:0], 0
	}
	l.events -= e.n
	return e
}

// Input is one plugin's way into the pipeline. The supervisor gets it from
// Register and hands it every batch the plugin sends.
type Input struct {
	p     *Pipeline
	name  string
	limit Limits
	tele  *rate.Limiter
	alert *rate.Limiter

	mu      sync.Mutex
	version string
	alerts  lane
	telem   lane
	writing int
	// The plugin's cumulative totals restart from zero in each process;
	// base* hold the sums of finished incarnations, last* the latest
	// values of this one, and recvInc what this one has sent.
	baseEmitted uint64
	lastEmitted uint64
	basePD      map[string]uint64
	lastPD      map[string]uint64
	recvInc     uint64
	received    uint64
	delivered   uint64
	dropped     [nReasons]uint64
	counters    map[string]uint64
}

func newInput(p *Pipeline, name, version string, l Limits) *Input {
	return &Input{
		p:       p,
		name:    name,
		version: version,
		limit:   l,
		tele:    rate.NewLimiter(rate.Limit(l.Rate), l.Burst),
		alert:   rate.NewLimiter(rate.Limit(l.AlertRate), l.AlertBurst),
		basePD:  map[string]uint64{},
		lastPD:  map[string]uint64{},
	}
}

// Name returns the plugin's name.
func (in *Input) Name() string { return in.name }

// SetVersion sets the plugin version written on events submitted from now
// on, e.g. once the supervisor has the running binary's Info. Events
// already queued keep the version they were submitted under.
func (in *Input) SetVersion(version string) {
	in.mu.Lock()
	in.version = version
	in.mu.Unlock()
}

// Submit takes a batch received from the plugin. It never blocks on the
// sinks: events that do not fit the plugin's rate or queue are dropped and
// counted at once. The pipeline keeps b.Events and b.Counters, so the
// caller must not reuse b. Submit is safe for concurrent use, but the
// cumulative totals of one plugin process should arrive in order, as they
// do on its one stream.
func (in *Input) Submit(b *pluginpb.EventBatch) {
	now := in.p.clock.Now()
	in.mu.Lock()
	in.noteTotals(b)
	n := int(b.Count)
	in.recvInc += uint64(n)
	in.received += uint64(n)
	in.floorEmitted()
	if n == 0 {
		in.mu.Unlock()
		return
	}
	if in.p.closing.Load() {
		in.dropped[rShutdown] += uint64(n)
		in.mu.Unlock()
		return
	}
	recs := b.Events
	lim := in.tele
	if b.Alerts {
		lim = in.alert
	}
	if k := take(lim, now, n); k < n {
		in.dropped[rRateLimited] += uint64(n - k)
		recs, n = in.cut(recs, k)
	}
	if n == 0 {
		in.mu.Unlock()
		return
	}
	space := in.limit.QueueSize - in.alerts.events - in.telem.events
	if b.Alerts && space < n {
		space += in.evictTelemetry(n - space)
	}
	if space < n {
		k := max(space, 0)
		in.dropped[rQueueFull] += uint64(n - k)
		recs, n = in.cut(recs, k)
	}
	if n > 0 {
		e := entry{recs: recs, n: n, version: in.version}
		if b.Alerts {
			in.alerts.push(e)
		} else {
			in.telem.push(e)
		}
	}
	in.mu.Unlock()
	if n > 0 {
		in.p.notify()
	}
}

// noteTotals records the plugin's cumulative totals and counters.
func (in *Input) noteTotals(b *pluginpb.EventBatch) {
	if b.EmittedTotal > in.lastEmitted {
		in.lastEmitted = b.EmittedTotal
	}
	for k, v := range b.DroppedTotal {
		if v > in.lastPD[k] {
			in.lastPD[k] = v
		}
	}
	if b.Counters != nil {
		in.counters = b.Counters
	}
}

// floorEmitted keeps the identity exact when a plugin under-reports: it
// cannot have emitted fewer events than it sent and dropped.
func (in *Input) floorEmitted() {
	sent := in.recvInc
	for _, v := range in.lastPD {
		sent += v
	}
	if in.lastEmitted < sent {
		in.lastEmitted = sent
	}
}

// take spends up to n tokens of l at now and returns how many it got.
func take(l *rate.Limiter, now time.Time, n int) int {
	if l.AllowN(now, n) {
		return n
	}
	k := min(int(l.TokensAt(now)), n)
	if k > 0 && l.AllowN(now, k) {
		return k
	}
	return 0
}

// cut keeps the first k records of recs and returns them and their
// number. If one of them does not decode, it keeps those before it and
// counts the others of the k as malformed.
func (in *Input) cut(recs []byte, k int) ([]byte, int) {
	rest := recs
	for i := 0; i < k; i++ {
		_, r, err := sdk.NextRecord(rest)
		if err != nil {
			in.dropped[rMalformed] += uint64(k - i)
			return recs[:len(recs)-len(rest)], i
		}
		rest = r
	}
	return recs[:len(recs)-len(rest)], k
}

// evictTelemetry drops up to need of the oldest queued telemetry events to
// make room for an alert, counting them as queue_full, and returns how many
// it dropped.
func (in *Input) evictTelemetry(need int) int {
	freed := 0
	for freed < need && in.telem.len() > 0 {
		e := &in.telem.q[in.telem.head]
		if e.n <= need-freed {
			freed += in.telem.pop().n
			continue
		}
		// Drop the head of the oldest batch, record by record.
		drop := need - freed
		rest := e.recs
		for i := 0; i < drop; i++ {
			_, r, err := sdk.NextRecord(rest)
			if err != nil {
				// The batch's tail does not decode: drop the whole entry.
				freed += in.telem.pop().n
				drop = -1
				break
			}
			rest = r
		}
		if drop < 0 {
			continue
		}
		e.recs, e.n = rest, e.n-drop
		in.telem.events -= drop
		freed += drop
	}
	in.dropped[rQueueFull] += uint64(freed)
	return freed
}

// pop takes the oldest entry of the alert or telemetry lane.
func (in *Input) pop(alerts bool) (entry, bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	l := &in.telem
	if alerts {
		l = &in.alerts
	}
	if l.len() == 0 {
		return entry{}, false
	}
	e := l.pop()
	in.writing += e.n
	return e, true
}

// done records the fate of an entry the writer took.
func (in *Input) done(taken, delivered, malformed, failed int) {
	in.mu.Lock()
	in.writing -= taken
	in.delivered += uint64(delivered)
	in.dropped[rMalformed] += uint64(malformed)
	in.dropped[rSinkError] += uint64(failed)
	in.mu.Unlock()
}

// dropQueued empties both lanes, counting what was in them as dropped for
// shutdown.
func (in *Input) dropQueued() {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, l := range []*lane{&in.alerts, &in.telem} {
		for l.len() > 0 {
			in.dropped[rShutdown] += uint64(l.pop().n)
		}
	}
}

// Restarted tells the pipeline that a new plugin process has started: the
// next batch's cumulative totals start again from zero. Call it before each
// process's first batch and after the previous process's last one (calling
// it before the very first process is harmless). Events the old process
// counted as emitted but never sent are counted as dropped (reason
// "plugin_exit"), and its counters are forgotten.
func (in *Input) Restarted() {
	in.mu.Lock()
	defer in.mu.Unlock()
	var pd uint64
	for k, v := range in.lastPD {
		pd += v
		in.basePD[k] += v
	}
	if sent := in.recvInc + pd; in.lastEmitted > sent {
		in.dropped[rPluginExit] += in.lastEmitted - sent
	}
	in.baseEmitted += in.lastEmitted
	in.lastEmitted, in.recvInc = 0, 0
	clear(in.lastPD)
	in.counters = nil
}
