package pipeline

import (
	"sync"

	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

// HostPlugin is the plugin name under which the host's own records
// (heartbeat, plugin lifecycle) travel.
const HostPlugin = "host"

// HostEmitter is the host's own sdk.Emitter: it sends each event through
// the pipeline as a batch of one, under the plugin name "host", with the
// same accounting as a plugin's. The host emits a few records a second, so
// batching them would only delay them.
type HostEmitter struct {
	in    *Input
	clock Clock

	mu       sync.Mutex
	seq      uint64
	emitted  uint64
	counters map[string]*sdk.Counter
}

var _ sdk.Emitter = (*HostEmitter)(nil)

// HostEmitter registers the host's input with the host's version and
// returns its emitter. Call it once: the emitter keeps the host's
// cumulative emitted count.
func (p *Pipeline) HostEmitter(version string) *HostEmitter {
	return &HostEmitter{in: p.Register(HostPlugin, version), clock: p.clock, counters: map[string]*sdk.Counter{}}
}

// Emit encodes ev and submits it. A zero ev.Time means now. It never
// blocks; a drop is counted by the pipeline and not reported here.
func (h *HostEmitter) Emit(ev *sdk.Event) error {
	ts := ev.Time.UnixNano()
	if ev.Time.IsZero() {
		ts = h.clock.Now().UnixNano()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	h.emitted++
	b := &pluginpb.EventBatch{
		Seq:          h.seq,
		Count:        1,
		Alerts:       ev.Alert,
		Events:       sdk.AppendEventRecord(nil, ev, ts),
		EmittedTotal: h.emitted,
	}
	if len(h.counters) > 0 {
		b.Counters = make(map[string]uint64, len(h.counters))
		for k, c := range h.counters {
			b.Counters[k] = c.Load()
		}
	}
	h.in.Submit(b)
	return nil
}

// Counter returns the host counter with that name, reported with the host's
// next record.
func (h *HostEmitter) Counter(name string) *sdk.Counter {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, ok := h.counters[name]
	if !ok {
		c = &sdk.Counter{}
		h.counters[name] = c
	}
	return c
}
