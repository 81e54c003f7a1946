package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/containerd/cgroups/v3/cgroup2"
)

type v2Handle struct {
	mgr *cgroup2.Manager
}

// v2Controllers are the controllers Vigil enables for its groups, where the
// hierarchy offers them.
var v2Controllers = []string{ctlCPU, ctlMemory, ctlPids}

func (g *Group) v2Enabled() []string {
	var out []string
	for _, c := range v2Controllers {
		if slices.Contains(g.m.sys.V2Controllers, c) {
			out = append(out, c)
		}
	}
	return out
}

// createV2 makes the group's directory. Unless it is the host's group, it
// also enables the controllers on every ancestor and sets the limits; the
// host's group gets them after the host has moved in (EnterHost), since a
// v2 group with processes cannot enable controllers for its children.
func (g *Group) createV2(l Limits) error {
	if err := g.checkV2Controllers(l); err != nil {
		return err
	}
	h := g.m.hiers[""]
	if err := os.MkdirAll(g.dirs[""], 0o755); err != nil {
		return err
	}
	mgr, err := cgroup2.Load(g.rels[""], cgroup2.WithMountpoint(h.mount))
	if err != nil {
		return err
	}
	g.v2.mgr = mgr
	if g.name == HostGroup {
		return nil
	}
	if err := g.enableV2(); err != nil {
		return err
	}
	return g.updateV2(l)
}

func (g *Group) checkV2Controllers(l Limits) error {
	need := map[string]bool{ctlCPU: l.CPUQuotaPercent > 0, ctlMemory: l.MemoryBytes > 0, ctlPids: l.Pids > 0}
	for _, c := range v2Controllers {
		if need[c] && !slices.Contains(g.m.sys.V2Controllers, c) {
			return fmt.Errorf("%w: the %s controller is not available in the cgroup2 hierarchy %s (it has %v)",
				ErrUnavailable, c, g.m.sys.V2, g.m.sys.V2Controllers)
		}
	}
	return nil
}

func (g *Group) enableV2() error {
	ctls := g.v2Enabled()
	if len(ctls) == 0 {
		return nil
	}
	if err := g.v2.mgr.ToggleControllers(ctls, cgroup2.Enable); err != nil {
		return fmt.Errorf("enabling controllers %v: %w", ctls, err)
	}
	return nil
}

func (g *Group) updateV2(l Limits) error {
	if err := g.checkV2Controllers(l); err != nil {
		return err
	}
	dir := g.dirs[""]
	type file struct{ name, value string }
	var files []file
	if slices.Contains(g.m.sys.V2Controllers, ctlCPU) {
		q := "max"
		if l.CPUQuotaPercent > 0 {
			q = strconv.FormatInt(l.quotaMicros(), 10)
		}
		files = append(files, file{"cpu.max", q + " " + strconv.Itoa(cpuPeriod)})
	}
	if slices.Contains(g.m.sys.V2Controllers, ctlMemory) {
		m := "max"
		if l.MemoryBytes > 0 {
			m = strconv.FormatUint(l.MemoryBytes, 10)
			if _, err := os.Stat(filepath.Join(dir, "memory.swap.max")); err == nil {
				files = append(files, file{"memory.swap.max", "0"}) // no swap on top of the limit
			}
		}
		files = append(files, file{"memory.max", m})
	}
	if slices.Contains(g.m.sys.V2Controllers, ctlPids) {
		p := "max"
		if l.Pids > 0 {
			p = strconv.FormatUint(l.Pids, 10)
		}
		files = append(files, file{"pids.max", p})
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), []byte(f.value), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (g *Group) addProcV2(pid int) error { return g.v2.mgr.AddProc(uint64(pid)) }

// killV2 writes cgroup.kill (Linux 5.14+), which kills every process in the
// group and its sub-groups at once; older kernels fall back to signalling
// each process.
func (g *Group) killV2() error {
	err := os.WriteFile(filepath.Join(g.dirs[""], "cgroup.kill"), []byte("1"), 0)
	if err == nil {
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for range 10 {
		n, err := signalAll(g.dirs[""])
		if err != nil || n == 0 {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

func (g *Group) deleteV2() error {
	err := g.v2.mgr.Delete()
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
