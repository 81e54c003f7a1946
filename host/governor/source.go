package governor

import (
	"fmt"
	"os"
	"time"

	"github.com/vigil-hids/vigil/host/breaker"
	"github.com/vigil-hids/vigil/host/cgroup"
	"github.com/vigil-hids/vigil/host/procstat"
)

// Reading is one cumulative reading of a plugin's (or the host's) use.
type Reading struct {
	// CPU is the total CPU time used so far; the governor turns the
	// difference between two readings into a percentage.
	CPU time.Duration
	// RSS is the resident (anonymous) memory now.
	RSS uint64
	// OOMKills is the cumulative count of OOM kills in the plugin's group.
	OOMKills uint64
}

// Source reads a plugin's use. The governor makes one from the cgroup
// where there is one, from /proc otherwise; tests may attach their own.
type Source interface {
	Read() (Reading, error)
	// Kind names the source for status output: "cgroup" or "procstat".
	Kind() string
}

// groupSource reads a cgroup's accounting: it covers the plugin and every
// process it forked, and sees OOM kills.
type groupSource struct{ g *cgroup.Group }

func (s groupSource) Kind() string { return "cgroup" }

func (s groupSource) Read() (Reading, error) {
	st, err := s.g.Stats()
	if err != nil {
		return Reading{}, err
	}
	return Reading{CPU: st.CPU, RSS: st.MemoryRSS, OOMKills: st.OOMKills}, nil
}

// treeSource reads /proc for a process and its live descendants.
type treeSource struct {
	root string
	pid  int
}

func (s treeSource) Kind() string { return "procstat" }

func (s treeSource) Read() (Reading, error) {
	t, err := procstat.Tree(s.root, s.pid)
	if err != nil {
		return Reading{}, err
	}
	return Reading{CPU: t.CPU, RSS: t.RSS}, nil
}

// selfSource reads the host process's own CPU time (without the children
// it reaped: those are plugins, counted on their own) and RSS, without
// allocating.
type selfSource struct{ p *procstat.Proc }

func newSelfSource(root string) (*selfSource, error) {
	p, err := procstat.Open(root, os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("opening the host's own /proc files: %w", err)
	}
	return &selfSource{p: p}, nil
}

func (s *selfSource) Kind() string { return "procstat" }

func (s *selfSource) Read() (Reading, error) {
	smp, err := s.p.Sample()
	if err != nil {
		return Reading{}, err
	}
	return Reading{CPU: smp.Own, RSS: smp.RSS}, nil
}

// CgroupLimits returns the hard limits of a plugin's cgroup for its breaker
// limits: the quota and memory limit sit above the breaker thresholds, so
// the breaker sees a plugin in trouble before the kernel throttles or kills
// it.
func CgroupLimits(l breaker.Limits) cgroup.Limits {
	return cgroup.Limits{CPUQuotaPercent: l.QuotaCPUPercent, MemoryBytes: l.QuotaMemoryBytes, Pids: l.Pids}
}
