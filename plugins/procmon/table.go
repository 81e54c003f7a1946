package procmon

import "sync"

// procTable remembers recent processes (pid, parent, executable) so an exec
// can be given its lineage even when the parent has already exited. It is
// bounded: past its capacity the oldest entries are forgotten first. Exit
// events remove entries, so a reused pid does not inherit a stale past.
// Executable paths are interned, because a busy host runs the same few
// binaries over and over.
type procTable struct {
	mu      sync.Mutex
	cap     int
	entries map[int32]procEntry
	ring    []int32 // insertion order, for eviction
	next    int
	interns map[string]string
}

type procEntry struct {
	ppid int32
	exe  string
	slot int32 // index in ring, so an old slot does not evict a newer entry
}

const maxInterned = 4096

func newProcTable(capacity int) *procTable {
	return &procTable{
		cap:     capacity,
		entries: make(map[int32]procEntry), // grows with the host's live processes, not to capacity
		ring:    make([]int32, capacity),
		interns: make(map[string]string, 256),
	}
}

// intern returns a string equal to b, shared with earlier calls. The map
// lookup with string(b) does not allocate; only a new path does.
func (t *procTable) intern(b []byte) string {
	if s, ok := t.interns[string(b)]; ok {
		return s
	}
	if len(t.interns) >= maxInterned {
		clear(t.interns)
	}
	s := string(b)
	t.interns[s] = s
	return s
}

// put records pid's parent and executable.
func (t *procTable) put(pid, ppid int32, exe []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := procEntry{ppid: ppid, exe: t.intern(exe)}
	if cur, ok := t.entries[pid]; ok {
		e.slot = cur.slot
	} else {
		if old := t.ring[t.next]; old != 0 {
			if o, ok := t.entries[old]; ok && o.slot == int32(t.next) {
				delete(t.entries, old)
			}
		}
		t.ring[t.next] = pid
		e.slot = int32(t.next)
		t.next = (t.next + 1) % t.cap
	}
	t.entries[pid] = e
}

// get returns what is known of pid.
func (t *procTable) get(pid int32) (procEntry, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[pid]
	return e, ok
}

// remove forgets pid (it exited). Its ring slot is reclaimed lazily.
func (t *procTable) remove(pid int32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.entries, pid)
}

func (t *procTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries)
}
