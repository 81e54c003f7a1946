package netmon

import (
	"sync"

	"github.com/vigil-hids/vigil/sdk"
)

// recorder is an sdk.Emitter that keeps events in memory, for tests of the
// monitor below the plugin protocol (the plugin-level tests use sdktest).
type recorder struct {
	mu       sync.Mutex
	events   []recorded
	counters map[string]*sdk.Counter
}

type recorded struct {
	Type     string
	Alert    bool
	Severity sdk.Severity
	Fields   map[string]any
}

func (e recorded) str(k string) string { s, _ := e.Fields[k].(string); return s }
func (e recorded) num(k string) int64  { n, _ := e.Fields[k].(int64); return n }

func newRecorder() *recorder { return &recorder{counters: map[string]*sdk.Counter{}} }

func (r *recorder) Emit(ev *sdk.Event) error {
	rec := recorded{Type: ev.Type, Alert: ev.Alert, Severity: ev.Severity, Fields: map[string]any{}}
	for _, f := range ev.Fields {
		switch f.Kind {
		case sdk.KindInt:
			rec.Fields[f.Key] = f.Int
		case sdk.KindBool:
			rec.Fields[f.Key] = f.Int != 0
		default:
			rec.Fields[f.Key] = f.Str
		}
	}
	r.mu.Lock()
	r.events = append(r.events, rec)
	r.mu.Unlock()
	return nil
}

func (r *recorder) Counter(name string) *sdk.Counter {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.counters[name]
	if !ok {
		c = &sdk.Counter{}
		r.counters[name] = c
	}
	return c
}

// take returns and forgets the events so far.
func (r *recorder) take() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	evs := r.events
	r.events = nil
	return evs
}
