package supervisor

import (
	"sync"
	"time"
)

// LifecycleKind says what happened to a plugin process.
type LifecycleKind string

// Lifecycle kinds.
const (
	// LifeRunning: the process passed the handshake, Info and Configure
	// and its event stream is open.
	LifeRunning LifecycleKind = "running"
	// LifeStartFailed: the start failed (checksum, handshake, Info,
	// Configure, or the process died during it).
	LifeStartFailed LifecycleKind = "start-failed"
	// LifeDied: a running process ended without being asked to.
	LifeDied LifecycleKind = "died"
)

// Lifecycle is one start or unrequested end of a plugin process. Path and
// SHA256 are the spec's, so an observer can tell which binary it concerns.
type Lifecycle struct {
	Plugin string
	Kind   LifecycleKind
	Path   string
	SHA256 string
	PID    int
	Err    error
	At     time.Time
}

type observer struct{ fn func(Lifecycle) }

// observers are the lifecycle subscribers by plugin name; the zero value
// is ready.
type observers struct {
	mu sync.Mutex
	m  map[string][]*observer
}

// Observe calls fn with every start and unrequested end of the named
// plugin's processes until cancel is called. fn runs on the plugin's
// supervision goroutine and must not block.
func (m *Manager) Observe(name string, fn func(Lifecycle)) (cancel func()) {
	o := &observer{fn: fn}
	m.obs.mu.Lock()
	if m.obs.m == nil {
		m.obs.m = map[string][]*observer{}
	}
	m.obs.m[name] = append(m.obs.m[name], o)
	m.obs.mu.Unlock()
	return func() {
		m.obs.mu.Lock()
		defer m.obs.mu.Unlock()
		list := m.obs.m[name]
		for i, x := range list {
			if x == o {
				m.obs.m[name] = append(list[:i:i], list[i+1:]...)
				break
			}
		}
		if len(m.obs.m[name]) == 0 {
			delete(m.obs.m, name)
		}
	}
}

// notify tells the plugin's observers; it must not be called with p.mu
// held.
func (p *Plugin) notify(kind LifecycleKind, spec Spec, pid int, err error) {
	m := p.m
	m.obs.mu.Lock()
	list := append([]*observer(nil), m.obs.m[spec.Name]...)
	m.obs.mu.Unlock()
	if len(list) == 0 {
		return
	}
	ev := Lifecycle{Plugin: spec.Name, Kind: kind, Path: spec.Path, SHA256: spec.SHA256, PID: pid, Err: err, At: m.clock.Now()}
	for _, o := range list {
		o.fn(ev)
	}
}
