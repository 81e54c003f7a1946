package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

type v1Handle struct {
	cg       cgroup1.Cgroup
	freezer  bool
	swapFile bool // memory.memsw.limit_in_bytes exists
}

// subsystems returns containerd subsystems for the mounted controllers and
// the path function that places the group in each.
//
// containerd joins a subsystem's root, its name and the path. A controller
// mounted under another name (cpu in "cpu,cpuacct" without a symlink) is
// reached by stepping back out of the name: root/cpu/../cpu,cpuacct/...
func (g *Group) subsystems() ([]cgroup1.Subsystem, cgroup1.Path) {
	var subs []cgroup1.Subsystem
	args := map[cgroup1.Name]string{}
	for _, ctl := range v1Controllers {
		h, ok := g.m.hiers[ctl]
		if !ok {
			continue
		}
		root := filepath.Dir(h.mount)
		arg := g.rels[ctl]
		if base := filepath.Base(h.mount); base != ctl {
			arg = "/../" + base + arg
		}
		args[cgroup1.Name(ctl)] = arg
		switch ctl {
		case ctlCPU:
			subs = append(subs, cgroup1.NewCpu(root))
		case ctlCPUAcct:
			subs = append(subs, cgroup1.NewCpuacct(root))
		case ctlMemory:
			subs = append(subs, cgroup1.NewMemory(root, cgroup1.IgnoreModules("kmem", "kmem.tcp"), cgroup1.OptionalSwap()))
		case ctlPids:
			subs = append(subs, cgroup1.NewPids(root))
		case ctlFreezer:
			subs = append(subs, cgroup1.NewFreezer(root))
		}
	}
	return subs, func(n cgroup1.Name) (string, error) {
		if a, ok := args[n]; ok {
			return a, nil
		}
		return "", cgroup1.ErrControllerNotActive
	}
}

// checkV1Controllers refuses a limit whose controller is not mounted, rather
// than silently not applying it.
func (g *Group) checkV1Controllers(l Limits) error {
	need := map[string]bool{ctlCPU: l.CPUQuotaPercent > 0, ctlMemory: l.MemoryBytes > 0, ctlPids: l.Pids > 0}
	for _, c := range []string{ctlCPU, ctlMemory, ctlPids} {
		if _, ok := g.m.hiers[c]; need[c] && !ok {
			return fmt.Errorf("%w: the %s controller is not mounted as cgroup v1", ErrUnavailable, c)
		}
	}
	return nil
}

func (g *Group) createV1(l Limits) error {
	if err := g.checkV1Controllers(l); err != nil {
		return err
	}
	subs, p := g.subsystems()
	_, memsw := os.Stat(filepath.Join(filepath.Dir(g.dirs[ctlMemory]), "memory.memsw.limit_in_bytes"))
	g.v1.swapFile = memsw == nil
	_, g.v1.freezer = g.dirs[ctlFreezer]
	cg, err := cgroup1.New(p, g.resourcesV1(l), cgroup1.WithHierarchy(func() ([]cgroup1.Subsystem, error) { return subs, nil }))
	if err != nil {
		return err
	}
	g.v1.cg = cg
	return g.unlimitV1(l)
}

func (g *Group) resourcesV1(l Limits) *specs.LinuxResources {
	quota := l.quotaMicros()
	period := uint64(cpuPeriod)
	mem := int64(-1)
	if l.MemoryBytes > 0 {
		mem = int64(l.MemoryBytes)
	}
	r := &specs.LinuxResources{
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
		Memory: &specs.LinuxMemory{Limit: &mem},
	}
	if g.v1.swapFile {
		// memory+swap equal to memory: no swap on top of the limit.
		r.Memory.Swap = &mem
	}
	if l.Pids > 0 {
		n := int64(l.Pids)
		r.Pids = &specs.LinuxPids{Limit: &n}
	}
	return r
}

// unlimitV1 writes "max" to pids.max when no cap is wanted (containerd only
// writes positive limits).
func (g *Group) unlimitV1(l Limits) error {
	if d, ok := g.dirs[ctlPids]; ok && l.Pids == 0 {
		return os.WriteFile(filepath.Join(d, "pids.max"), []byte("max"), 0)
	}
	return nil
}

func (g *Group) updateV1(l Limits) error {
	if err := g.checkV1Controllers(l); err != nil {
		return err
	}
	if err := g.v1.cg.Update(g.resourcesV1(l)); err != nil {
		return err
	}
	return g.unlimitV1(l)
}

func (g *Group) addProcV1(pid int) error {
	return g.v1.cg.Add(cgroup1.Process{Pid: pid})
}

// killV1 freezes the group (when the freezer is mounted), SIGKILLs every
// process in it and thaws it, so the signals are delivered at once. Without
// a freezer it repeats the kill until the group is empty, since a process
// may fork between the read and the signal.
func (g *Group) killV1() error {
	frozen := false
	if g.v1.freezer {
		frozen = setFreezer(g.dirs[ctlFreezer], "FROZEN", 200*time.Millisecond) == nil
	}
	var err error
	for range 10 {
		var n int
		n, err = signalAll(g.dirs[g.primary()])
		if err != nil || n == 0 || frozen {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if g.v1.freezer {
		// Thaw even when freezing timed out half way (FREEZING): a frozen
		// task only dies of its SIGKILL once thawed.
		err = errors.Join(err, setFreezer(g.dirs[ctlFreezer], "THAWED", time.Second))
	}
	return err
}

// setFreezer moves a v1 freezer group to state and waits for it up to
// timeout (containerd waits without a bound, which would hang on a task
// stuck in uninterruptible sleep).
func setFreezer(dir, state string, timeout time.Duration) error {
	f := filepath.Join(dir, "freezer.state")
	deadline := time.Now().Add(timeout)
	for {
		if err := os.WriteFile(f, []byte(state), 0); err != nil {
			return err
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if string(bytes.TrimSpace(b)) == state {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("freezer of %s still %s after %s", dir, bytes.TrimSpace(b), timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

func (g *Group) deleteV1() error {
	err := g.v1.cg.Delete()
	if errors.Is(err, cgroup1.ErrCgroupDeleted) {
		return nil
	}
	return err
}

// signalAll SIGKILLs every process listed under dir (recursively) except the
// host itself, and returns how many it signalled.
func signalAll(dir string) (int, error) {
	pids, err := readPids(dir, true)
	if err != nil {
		return 0, err
	}
	self := os.Getpid()
	n := 0
	for _, pid := range pids {
		if pid == self {
			continue
		}
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return n, fmt.Errorf("signalling pid %d: %w", pid, err)
		}
		n++
	}
	return n, nil
}

// readPids reads cgroup.procs under dir, and under its sub-groups when
// recursive is set.
func readPids(dir string, recursive bool) ([]int, error) {
	var pids []int
	walk := func(d string) error {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			return err
		}
		for _, f := range splitFields(b) {
			var v int
			if _, err := fmt.Sscan(f, &v); err == nil && v > 0 && !slices.Contains(pids, v) {
				pids = append(pids, v)
			}
		}
		return nil
	}
	if !recursive {
		return pids, walk(dir)
	}
	err := filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			if p != dir && errors.Is(err, os.ErrNotExist) {
				return nil // a sub-group removed while we walked
			}
			return err
		}
		if !e.IsDir() {
			return nil
		}
		if err := walk(p); err != nil && !(p != dir && errors.Is(err, os.ErrNotExist)) {
			return err
		}
		return nil
	})
	return pids, err
}

func splitFields(b []byte) []string {
	var out []string
	start := -1
	for i, c := range b {
		if c == ' ' || c == '\n' || c == '\t' {
			if start >= 0 {
				out = append(out, string(b[start:i]))
				start = -1
			}
			continue
		}
		if start < 0 {
			start = i
		}
	}
	if start >= 0 {
		out = append(out, string(b[start:]))
	}
	return out
}
