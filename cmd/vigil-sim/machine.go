package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// cpuMark is where this machine's CPU time stood at one moment: by kind
// (from /proc/stat), and for the simulator and the cell's members (from
// /proc/PID/stat). Two marks tell whether a change was bound by CPU (no
// idle time), by something else (idle time while hosts were still
// waiting), or by the hypervisor (stolen time).
type cpuMark struct {
	at                time.Time
	busy, idle, steal float64 // seconds, all cores
	sim, members      float64 // seconds
	ok                bool    // /proc/stat was read
}

// mark reads the machine's and the processes' CPU time now.
func (s *Sim) mark() cpuMark {
	m := cpuMark{at: time.Now()}
	m.busy, m.idle, m.steal, m.ok = machineCPU()
	_, m.sim = procStats(os.Getpid())
	if s.cell != nil {
		for _, st := range s.cell.stats() {
			m.members += st.CPUSeconds
		}
	}
	return m
}

// machineCPU reads /proc/stat's first line: busy time (user, nice,
// system, irq, softirq), idle time (idle, iowait) and time stolen by the
// hypervisor, in seconds summed over the cores.
func machineCPU() (busy, idle, steal float64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, 0, false
	}
	var v [8]float64
	for i := range v {
		n, err := strconv.ParseFloat(f[i+1], 64)
		if err != nil {
			return 0, 0, 0, false
		}
		v[i] = n / 100 // USER_HZ
	}
	// user nice system idle iowait irq softirq steal
	return v[0] + v[1] + v[2] + v[5] + v[6], v[3] + v[4], v[7], true
}

// since describes the CPU spent between an earlier mark and this one.
func (m cpuMark) since(a cpuMark) string {
	if !m.ok || !a.ok {
		return ""
	}
	busy, idle, steal := m.busy-a.busy, m.idle-a.idle, m.steal-a.steal
	sim, members := m.sim-a.sim, m.members-a.members
	return fmt.Sprintf("; machine over %.2f s (%d cores): busy %.2f CPU-s (members %.2f, simulator %.2f, the rest %.2f), idle %.2f, stolen by the hypervisor %.2f",
		m.at.Sub(a.at).Seconds(), runtime.NumCPU(), busy, members, sim, max(0, busy-members-sim), idle, steal)
}
