package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// statFiles reads a group's accounting from files it keeps open, with
// pread at offset 0 (which makes the kernel regenerate a cgroup file), so a
// reading costs one system call per file and no allocations. containerd's
// Stat reads every file of every controller (about 25 on v1) and allocates
// a few hundred times per call; the governor reads each plugin every few
// seconds for the life of the host, so this package reads only what it
// needs.
type statFiles struct {
	mu      sync.Mutex
	opened  bool
	version Version
	fds     [nStatFiles]int
	buf     [8192]byte
}

const (
	fCPUUsage   = iota // v1 cpuacct.usage
	fCPUStat           // cpu.stat: throttling (v1), also usage (v2)
	fMemCurrent        // v1 memory.usage_in_bytes, v2 memory.current
	fMemStat           // memory.stat: total_rss (v1), anon (v2)
	fMemOOM            // v1 memory.oom_control, v2 memory.events: oom_kill
	fPids              // pids.current
	nStatFiles
)

func (s *statFiles) open(g *Group) error {
	s.version = g.m.version
	for i := range s.fds {
		s.fds[i] = -1
	}
	type file struct {
		idx       int
		ctl, name string
	}
	var files []file
	if s.version == V2 {
		files = []file{
			{fCPUStat, "", "cpu.stat"}, {fMemCurrent, "", "memory.current"}, {fMemStat, "", "memory.stat"},
			{fMemOOM, "", "memory.events"}, {fPids, "", "pids.current"},
		}
	} else {
		files = []file{
			{fCPUUsage, ctlCPUAcct, "cpuacct.usage"}, {fCPUStat, ctlCPU, "cpu.stat"},
			{fMemCurrent, ctlMemory, "memory.usage_in_bytes"}, {fMemStat, ctlMemory, "memory.stat"},
			{fMemOOM, ctlMemory, "memory.oom_control"}, {fPids, ctlPids, "pids.current"},
		}
	}
	for _, f := range files {
		dir, ok := g.dirs[f.ctl]
		if !ok {
			continue
		}
		fd, err := unix.Open(filepath.Join(dir, f.name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			continue // controller not enabled for this group
		}
		if err != nil {
			s.close()
			return fmt.Errorf("opening %s: %w", f.name, err)
		}
		s.fds[f.idx] = fd
	}
	s.opened = true
	return nil
}

func (s *statFiles) close() {
	for i, fd := range s.fds {
		if fd >= 0 {
			unix.Close(fd)
			s.fds[i] = -1
		}
	}
	s.opened = false
}

func (s *statFiles) read(g *Group) (Stats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.opened {
		if err := s.open(g); err != nil {
			return Stats{}, err
		}
	}
	var st Stats
	v2 := s.version == V2
	if b, err := s.pread(fCPUStat); err != nil {
		return Stats{}, err
	} else if b != nil {
		if v2 {
			st.CPU = time.Duration(kv(b, "usage_usec")) * time.Microsecond
			st.Throttled = time.Duration(kv(b, "throttled_usec")) * time.Microsecond
		} else {
			st.Throttled = time.Duration(kv(b, "throttled_time"))
		}
		st.ThrottledPeriods = kv(b, "nr_throttled")
	}
	if b, err := s.pread(fCPUUsage); err != nil {
		return Stats{}, err
	} else if b != nil {
		st.CPU = time.Duration(single(b))
	}
	if b, err := s.pread(fMemCurrent); err != nil {
		return Stats{}, err
	} else if b != nil {
		st.MemoryCurrent = single(b)
	}
	if b, err := s.pread(fMemStat); err != nil {
		return Stats{}, err
	} else if b != nil {
		if v2 {
			st.MemoryRSS = kv(b, "anon")
		} else {
			st.MemoryRSS = kv(b, "total_rss")
		}
	}
	if b, err := s.pread(fMemOOM); err != nil {
		return Stats{}, err
	} else if b != nil {
		st.OOMKills = kv(b, "oom_kill")
	}
	if b, err := s.pread(fPids); err != nil {
		return Stats{}, err
	} else if b != nil {
		st.Tasks = single(b)
	}
	return st, nil
}

// pread re-reads file idx; it returns nil, nil for a file the group lacks.
func (s *statFiles) pread(idx int) ([]byte, error) {
	fd := s.fds[idx]
	if fd < 0 {
		return nil, nil
	}
	n, err := unix.Pread(fd, s.buf[:], 0)
	if err != nil {
		if errors.Is(err, unix.ENODEV) {
			return nil, ErrDeleted // the group was removed underneath us
		}
		return nil, err
	}
	return s.buf[:n], nil
}

// kv returns the value of key in a "key value" per line file, 0 if absent.
func kv(b []byte, key string) uint64 {
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(line) > len(key) && line[len(key)] == ' ' && string(line[:len(key)]) == key {
			return single(line[len(key)+1:])
		}
	}
	return 0
}

// single parses a file holding one unsigned number ("max" reads as 0).
func single(b []byte) uint64 {
	var n uint64
	for _, c := range bytes.TrimSpace(b) {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + uint64(c-'0')
	}
	return n
}
