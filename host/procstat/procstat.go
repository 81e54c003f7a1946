// Package procstat samples the CPU time and resident memory of a process
// from /proc, for the governor's fallback when a plugin has no cgroup.
//
// ParseStat and ParseStatm read the text of /proc/PID/stat and
// /proc/PID/statm; Proc keeps both files open and re-reads them with pread,
// so a sample costs two system calls and no allocations, and a reused pid
// can never be mistaken for the process that was opened (the open files
// belong to the original process and fail with ESRCH once it is gone).
// Tree adds the live descendants of a process, found through
// /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN), at the cost of a few
// opens and allocations per sample.
//
// The root path is configurable ("/proc" by default) so tests read a fake
// tree under testdata, as node_exporter does.
package procstat

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"
)

// ClockTicks is USER_HZ, the unit of the times in /proc/PID/stat. Linux
// fixes it at 100 on every architecture Vigil builds for (sysconf cannot be
// called without cgo).
const ClockTicks = 100

// DefaultRoot is where procfs is mounted.
const DefaultRoot = "/proc"

// ErrFormat is returned when a stat or statm file cannot be parsed.
var ErrFormat = errors.New("procstat: malformed proc file")

// Stat holds the fields of /proc/PID/stat that the governor uses.
type Stat struct {
	PID   int
	Comm  string
	State byte
	PPID  int
	// UTime and STime are the CPU time the process spent in user and
	// kernel mode; CUTime and CSTime that of its children it has waited for.
	UTime, STime, CUTime, CSTime time.Duration
	Threads                      int
	// StartTicks is the process start time in clock ticks after boot; with
	// the pid it identifies one process across pid reuse.
	StartTicks uint64
	// RSSPages is the resident set size in pages.
	RSSPages uint64
}

// CPU returns the process's own user plus kernel CPU time.
func (s Stat) CPU() time.Duration { return s.UTime + s.STime }

// ParseStat parses the text of /proc/PID/stat. Comm is left empty unless
// withComm is set, since copying it is the only allocation.
func ParseStat(b []byte, withComm bool) (Stat, error) {
	var s Stat
	// comm may hold spaces and parentheses: it runs from the first '(' to
	// the last ')'.
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open <= 0 || closing < open {
		return s, fmt.Errorf("%w: no command name", ErrFormat)
	}
	pid, ok := atou(bytes.TrimSpace(b[:open]))
	if !ok {
		return s, fmt.Errorf("%w: bad pid", ErrFormat)
	}
	s.PID = int(pid)
	if withComm {
		s.Comm = string(b[open+1 : closing])
	}
	// Fields after comm, numbered as in proc(5): 3 state, 4 ppid, ...
	rest := b[closing+1:]
	field := 2
	for len(rest) > 0 {
		rest = bytes.TrimLeft(rest, " ")
		if len(rest) == 0 {
			break
		}
		end := bytes.IndexAny(rest, " \n")
		if end < 0 {
			end = len(rest)
		}
		tok := rest[:end]
		rest = rest[end:]
		if len(rest) > 0 && rest[0] == '\n' {
			rest = rest[1:]
		}
		if len(tok) == 0 {
			continue
		}
		field++
		if field == 3 {
			s.State = tok[0]
			continue
		}
		switch field {
		case 4, 14, 15, 16, 17, 20, 22, 24:
		default:
			if field > 24 {
				return s, nil
			}
			continue
		}
		n, ok := atoi(tok)
		if !ok {
			return s, fmt.Errorf("%w: field %d is not a number", ErrFormat, field)
		}
		v := uint64(max(n, 0))
		switch field {
		case 4:
			s.PPID = int(v)
		case 14:
			s.UTime = ticks(v)
		case 15:
			s.STime = ticks(v)
		case 16:
			s.CUTime = ticks(v)
		case 17:
			s.CSTime = ticks(v)
		case 20:
			s.Threads = int(v)
		case 22:
			s.StartTicks = v
		case 24:
			s.RSSPages = v
		}
	}
	if field < 24 {
		return s, fmt.Errorf("%w: %d fields, want at least 24", ErrFormat, field)
	}
	return s, nil
}

// ReadStat reads and parses a stat file from r (at most 4 KiB are read; a
// stat line is well under 1 KiB).
func ReadStat(r io.Reader) (Stat, error) {
	var buf [4096]byte
	n, err := io.ReadFull(r, buf[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return Stat{}, fmt.Errorf("reading stat: %w", err)
	}
	return ParseStat(buf[:n], true)
}

// ReadStatm reads and parses a statm file from r.
func ReadStatm(r io.Reader) (Statm, error) {
	var buf [512]byte
	n, err := io.ReadFull(r, buf[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return Statm{}, fmt.Errorf("reading statm: %w", err)
	}
	return ParseStatm(buf[:n])
}

// Statm holds /proc/PID/statm, in pages.
type Statm struct {
	Size, Resident, Shared uint64
}

// ParseStatm parses the text of /proc/PID/statm.
func ParseStatm(b []byte) (Statm, error) {
	var m Statm
	dst := [3]*uint64{&m.Size, &m.Resident, &m.Shared}
	rest := b
	for i := range dst {
		rest = bytes.TrimLeft(rest, " ")
		end := bytes.IndexAny(rest, " \n")
		if end < 0 {
			end = len(rest)
		}
		v, ok := atou(rest[:end])
		if !ok {
			return m, fmt.Errorf("%w: statm field %d is not a number", ErrFormat, i+1)
		}
		*dst[i] = v
		rest = rest[end:]
	}
	return m, nil
}

func ticks(v uint64) time.Duration {
	const unit = time.Second / ClockTicks
	if v > uint64(1<<63-1)/uint64(unit) {
		return 1<<63 - 1
	}
	return time.Duration(v) * unit
}

// atou parses a decimal unsigned integer without allocating.
func atou(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (1<<64-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// atoi parses a decimal integer that may be negative (cutime, for one, is a
// signed field).
func atoi(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	u, ok := atou(b)
	if !ok || u > 1<<63-1 {
		return 0, false
	}
	if neg {
		return -int64(u), true
	}
	return int64(u), true
}

// Sample is one reading of a process (or a process tree).
type Sample struct {
	// CPU is the total CPU time consumed: user plus kernel, including
	// children that were waited for.
	CPU time.Duration
	// Own is the CPU time of the sampled processes alone, without their
	// waited-for children.
	Own time.Duration
	// RSS is the resident set size in bytes.
	RSS uint64
	// Procs is how many processes were summed.
	Procs int
}

var pageSize = uint64(os.Getpagesize())

func pidDir(root string, pid int) string {
	return root + "/" + strconv.Itoa(pid)
}
