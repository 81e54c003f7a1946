package procstat

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrGone is returned when the sampled process has exited.
var ErrGone = errors.New("procstat: process is gone")

// Proc is an open handle on one process's stat and statm files. It is not
// safe for concurrent use.
type Proc struct {
	pid   int
	stat  int
	statm int
	buf   [1024]byte
}

// Open opens /proc/PID/stat and /proc/PID/statm under root ("" means
// DefaultRoot).
func Open(root string, pid int) (*Proc, error) {
	if root == "" {
		root = DefaultRoot
	}
	dir := pidDir(root, pid)
	stat, err := unix.Open(dir+"/stat", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s/stat: %w", dir, gone(err))
	}
	statm, err := unix.Open(dir+"/statm", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(stat)
		return nil, fmt.Errorf("opening %s/statm: %w", dir, gone(err))
	}
	return &Proc{pid: pid, stat: stat, statm: statm}, nil
}

// PID returns the process id the handle was opened for.
func (p *Proc) PID() int { return p.pid }

// Stat re-reads and parses the stat file.
func (p *Proc) Stat() (Stat, error) {
	n, err := p.read(p.stat)
	if err != nil {
		return Stat{}, err
	}
	return ParseStat(p.buf[:n], false)
}

// Sample reads the process's CPU time (its own and that of children it has
// waited for) and RSS. It does not allocate.
func (p *Proc) Sample() (Sample, error) {
	st, err := p.Stat()
	if err != nil {
		return Sample{}, err
	}
	n, err := p.read(p.statm)
	if err != nil {
		return Sample{}, err
	}
	m, err := ParseStatm(p.buf[:n])
	if err != nil {
		return Sample{}, err
	}
	return Sample{
		CPU:   st.UTime + st.STime + st.CUTime + st.CSTime,
		Own:   st.CPU(),
		RSS:   m.Resident * pageSize,
		Procs: 1,
	}, nil
}

func (p *Proc) read(fd int) (int, error) {
	if fd < 0 {
		return 0, fmt.Errorf("reading pid %d: %w", p.pid, os.ErrClosed)
	}
	n, err := unix.Pread(fd, p.buf[:], 0)
	if err != nil {
		return 0, fmt.Errorf("reading pid %d: %w", p.pid, gone(err))
	}
	if n == 0 {
		return 0, fmt.Errorf("reading pid %d: %w", p.pid, ErrGone)
	}
	return n, nil
}

// Close closes the handle. It is idempotent.
func (p *Proc) Close() error {
	var err error
	for _, fd := range []*int{&p.stat, &p.statm} {
		if *fd >= 0 {
			err = errors.Join(err, unix.Close(*fd))
			*fd = -1
		}
	}
	return err
}

func gone(err error) error {
	if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("%w (%w)", ErrGone, err)
	}
	return err
}

// Tree samples pid and all its live descendants under root ("" means
// DefaultRoot): the sum of their CPU times (each including its waited-for
// children, so time of descendants that already exited is kept) and RSS.
// It allocates; use it where a process may fork helpers and no cgroup
// accounts for them.
func Tree(root string, pid int) (Sample, error) {
	if root == "" {
		root = DefaultRoot
	}
	var total Sample
	buf := make([]byte, 4096)
	queue := []int{pid}
	seen := map[int]bool{}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		if seen[cur] {
			continue
		}
		seen[cur] = true
		s, err := sampleOnce(root, cur, buf)
		if err != nil {
			if cur == pid || !errors.Is(err, ErrGone) {
				return Sample{}, err
			}
			continue // a descendant exited while we looked
		}
		total.CPU += s.CPU
		total.Own += s.Own
		total.RSS += s.RSS
		total.Procs++
		kids, err := children(root, cur, buf)
		if err != nil && cur == pid {
			return Sample{}, err
		}
		queue = append(queue, kids...)
	}
	return total, nil
}

func sampleOnce(root string, pid int, buf []byte) (Sample, error) {
	dir := pidDir(root, pid)
	b, err := readInto(dir+"/stat", buf)
	if err != nil {
		return Sample{}, err
	}
	st, err := ParseStat(b, false)
	if err != nil {
		return Sample{}, err
	}
	b, err = readInto(dir+"/statm", buf)
	if err != nil {
		return Sample{}, err
	}
	m, err := ParseStatm(b)
	if err != nil {
		return Sample{}, err
	}
	return Sample{CPU: st.UTime + st.STime + st.CUTime + st.CSTime, Own: st.CPU(), RSS: m.Resident * pageSize, Procs: 1}, nil
}

// children lists the children of every thread of pid.
func children(root string, pid int, buf []byte) ([]int, error) {
	dir := pidDir(root, pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, gone(err))
	}
	var kids []int
	for _, t := range tasks {
		b, err := readInto(dir+"/"+t.Name()+"/children", buf)
		if err != nil {
			continue // the thread exited
		}
		for len(b) > 0 {
			i := 0
			for i < len(b) && b[i] != ' ' && b[i] != '\n' {
				i++
			}
			if v, ok := atou(b[:i]); ok {
				kids = append(kids, int(v))
			}
			if i < len(b) {
				i++
			}
			b = b[i:]
		}
	}
	return kids, nil
}

func readInto(path string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, gone(err))
	}
	defer unix.Close(fd)
	n, err := unix.Pread(fd, buf, 0)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, gone(err))
	}
	return buf[:n], nil
}
