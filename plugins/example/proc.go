package example

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Sample is one reading of the machine's load and memory.
type Sample struct {
	Load1  float64 `json:"load1"`
	Load5  float64 `json:"load5"`
	Load15 float64 `json:"load15"`
	// Runnable and Procs are the scheduling entities running now and in
	// total (fourth field of /proc/loadavg).
	Runnable int `json:"runnable"`
	Procs    int `json:"procs"`
	// CPUs is the number of CPUs the kernel lists in /proc/stat.
	CPUs           int    `json:"cpus"`
	MemTotalKB     uint64 `json:"mem_total_kb"`
	MemAvailableKB uint64 `json:"mem_available_kb"`
}

// LoadPerCPU is the one-minute load divided by the number of CPUs.
func (s Sample) LoadPerCPU() float64 { return s.Load1 / float64(max(s.CPUs, 1)) }

// errFormat wraps every parse error, so a test can tell a malformed file
// from a missing one.
var errFormat = errors.New("example: unexpected format")

// readSample reads loadavg, meminfo and stat under root (normally /proc).
func readSample(root string) (Sample, error) {
	var s Sample
	for _, f := range []struct {
		name  string
		parse func(io.Reader, *Sample) error
	}{
		{"loadavg", parseLoadavg},
		{"meminfo", parseMeminfo},
		{"stat", parseStat},
	} {
		path := filepath.Join(root, f.name)
		fh, err := os.Open(path)
		if err != nil {
			return s, fmt.Errorf("reading %s: %w", path, err)
		}
		err = f.parse(fh, &s)
		fh.Close()
		if err != nil {
			return s, fmt.Errorf("parsing %s: %w", path, err)
		}
	}
	return s, nil
}

// parseLoadavg reads /proc/loadavg: "0.52 0.58 0.59 2/1234 56789".
func parseLoadavg(r io.Reader, s *Sample) error {
	b, err := io.ReadAll(io.LimitReader(r, 4096))
	if err != nil {
		return err
	}
	f := strings.Fields(string(b))
	if len(f) < 4 {
		return fmt.Errorf("%w: %d fields in loadavg, want at least 4", errFormat, len(f))
	}
	loads := [3]*float64{&s.Load1, &s.Load5, &s.Load15}
	for i, p := range loads {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil || !(v >= 0 && v < 1e9) { // also refuses NaN and Inf
			return fmt.Errorf("%w: load %q", errFormat, f[i])
		}
		*p = v
	}
	run, total, ok := strings.Cut(f[3], "/")
	if !ok {
		return fmt.Errorf("%w: runnable/total %q", errFormat, f[3])
	}
	if s.Runnable, err = strconv.Atoi(run); err != nil || s.Runnable < 0 {
		return fmt.Errorf("%w: runnable %q", errFormat, run)
	}
	if s.Procs, err = strconv.Atoi(total); err != nil || s.Procs < 0 {
		return fmt.Errorf("%w: total %q", errFormat, total)
	}
	return nil
}

// parseMeminfo reads MemTotal and MemAvailable from /proc/meminfo, whose
// lines read "MemTotal:       24684092 kB".
func parseMeminfo(r io.Reader, s *Sample) error {
	found := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch key {
		case "MemTotal":
			dst = &s.MemTotalKB
		case "MemAvailable":
			dst = &s.MemAvailableKB
		default:
			continue
		}
		num := strings.TrimSuffix(strings.TrimSpace(rest), " kB")
		v, err := strconv.ParseUint(strings.TrimSpace(num), 10, 64)
		if err != nil {
			return fmt.Errorf("%w: %s %q", errFormat, key, rest)
		}
		*dst = v
		found++
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if found < 2 {
		return fmt.Errorf("%w: MemTotal or MemAvailable missing", errFormat)
	}
	return nil
}

// parseStat counts the "cpuN" lines of /proc/stat.
func parseStat(r io.Reader, s *Sample) error {
	s.CPUs = 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20) // the intr line is long
	for sc.Scan() {
		line := sc.Text()
		if len(line) > 3 && strings.HasPrefix(line, "cpu") && line[3] >= '0' && line[3] <= '9' {
			s.CPUs++
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if s.CPUs == 0 {
		return fmt.Errorf("%w: no cpuN lines in stat", errFormat)
	}
	return nil
}
