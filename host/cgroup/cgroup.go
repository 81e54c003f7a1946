// Package cgroup puts the host and each plugin in a cgroup of its own, with a
// CPU quota, a memory limit and a process cap, on cgroup v1 and v2 alike.
//
// A Manager is rooted at a parent group (Config.Parent, "vigil" by default)
// and holds one Group for the host ("host", entered with EnterHost) and one
// per plugin (Create). A relative parent is nested under the cgroup the host
// was started in (with systemd, give the unit Delegate=yes); an absolute one
// is taken from each hierarchy's root.
//
// A plugin must run inside its group from its first instruction, so the
// group is applied at fork time, from the host's spawner thread (one
// goroutine locked to its OS thread for the life of the host, which must
// call runtime.LockOSThread before its first PrepareSpawn):
//
//	restore, err := group.PrepareSpawn(cmd) // on the spawner thread
//	if err != nil { ... }
//	err = cmd.Start()                       // or go-plugin's Client.Start
//	err = errors.Join(err, restore())       // same thread, right after
//
// On cgroup v2 PrepareSpawn sets SysProcAttr.UseCgroupFD, so clone3 starts
// the child inside the group (CLONE_INTO_CGROUP). On cgroup v1 the spawner
// thread writes its own thread id into the group's tasks files, the child
// inherits the thread's cgroups at fork, and restore moves the thread back
// where it was. Verify checks afterwards that a pid sits in the group.
//
// containerd/cgroups creates the groups, writes the limits, moves processes
// and removes directories; this package adds the layout detection, the
// spawn-time placement, killing a whole group (with a bounded freeze on v1),
// allocation-free accounting from files kept open (Stats), and removing the
// groups a previous run left behind (CleanupStale). The host must hold its
// single-instance lock before CleanupStale: it kills whatever it finds in
// Vigil's groups.
//
// Where cgroups cannot be used (not root, no cpu or memory controller, a
// read-only mount) NewManager returns an error wrapping ErrUnavailable: the
// host then runs with its breakers alone and should say so once.
package cgroup

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// Sentinel errors.
var (
	// ErrUnavailable means cgroups cannot be used on this host; the error
	// wrapping it says why.
	ErrUnavailable = errors.New("cgroup: unavailable")
	// ErrNotInGroup is returned by Verify for a process outside the group.
	ErrNotInGroup = errors.New("cgroup: process is not in its group")
	// ErrDeleted is returned by operations on a deleted group.
	ErrDeleted = errors.New("cgroup: group deleted")
	// ErrFormat is returned for a kernel file that cannot be parsed.
	ErrFormat = errors.New("cgroup: malformed file")
)

// DefaultParent is the parent group's default name.
const DefaultParent = "vigil"

// HostGroup is the name of the host's own group.
const HostGroup = "host"

// cpuPeriod is the CFS period Vigil writes with every quota (100 ms, the
// kernel's default).
const cpuPeriod = 100_000

// Config configures a Manager. The zero value is usable.
type Config struct {
	// Parent is the group every Vigil group is created under. Relative:
	// under the host's own cgroup; absolute: from the hierarchy root.
	Parent string `json:"parent"`
	// Version forces "v1" or "v2"; "" or "auto" picks v2 when its mount has
	// the cpu and memory controllers, v1 otherwise.
	Version string `json:"version"`
	// ProcRoot is where procfs is mounted ("" means /proc). Tests point it
	// at a fake tree.
	ProcRoot string `json:"-"`
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.Parent != "" {
		p := strings.Trim(c.Parent, "/")
		for _, part := range strings.Split(p, "/") {
			if part == "" || part == "." || part == ".." {
				errs = append(errs, fmt.Errorf("cgroup.parent must be a path of names without . or .. (got %q)", c.Parent))
				break
			}
		}
	}
	switch c.Version {
	case "", "auto", "v1", "v2":
	default:
		errs = append(errs, fmt.Errorf("cgroup.version must be one of auto, v1, v2 (got %q)", c.Version))
	}
	return errors.Join(errs...)
}

// Limits are a group's hard limits. A zero field means no limit.
type Limits struct {
	// CPUQuotaPercent is the CPU quota in percent of one core (5 means
	// 5 ms of CPU time in every 100 ms period).
	CPUQuotaPercent float64
	// MemoryBytes is the memory limit; the kernel OOM-kills inside the
	// group when it is reached. Swap is not allowed on top of it.
	MemoryBytes uint64
	// Pids caps the tasks (processes and threads) in the group.
	Pids uint64
}

func (l Limits) quotaMicros() int64 {
	if l.CPUQuotaPercent <= 0 {
		return -1
	}
	return max(int64(l.CPUQuotaPercent*cpuPeriod/100), 1000) // the kernel's minimum is 1 ms
}

// Stats is one reading of a group's accounting.
type Stats struct {
	// CPU is the CPU time used by every process that ran in the group.
	CPU time.Duration
	// MemoryCurrent is the memory charged to the group (including page
	// cache); MemoryRSS is its anonymous memory.
	MemoryCurrent uint64
	MemoryRSS     uint64
	// OOMKills counts processes the kernel OOM-killed in the group.
	OOMKills uint64
	// ThrottledPeriods and Throttled count the CFS periods in which the
	// group hit its quota and the time it spent throttled.
	ThrottledPeriods uint64
	Throttled        time.Duration
	// Tasks is how many tasks the pids controller counts.
	Tasks uint64
}

// Manager creates and removes the groups of one host.
type Manager struct {
	cfg     Config
	sys     System
	version Version
	log     *slog.Logger
	proc    string

	// v1: controller → hierarchy; v2: the single hierarchy under key "".
	hiers map[string]hierarchy

	mu     sync.Mutex
	groups map[string]*Group
}

// hierarchy is one mounted hierarchy Vigil uses: its mount point and the
// parent group's path inside it.
type hierarchy struct {
	mount string
	base  string // e.g. /vigil or /system.slice/vigil.service/vigil
}

// NewManager detects the cgroup layout, chooses v1 or v2, and creates the
// parent group. It returns an error wrapping ErrUnavailable when cgroups
// cannot be used.
func NewManager(cfg Config, log *slog.Logger) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Parent == "" {
		cfg.Parent = DefaultParent
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	proc := cfg.ProcRoot
	if proc == "" {
		proc = "/proc"
	}
	sys, err := Detect(proc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	m := &Manager{cfg: cfg, sys: sys, log: log.With("component", "cgroup"), proc: proc, groups: map[string]*Group{}}
	v1ok := hasV1(sys)
	v2ok := sys.HasV2(ctlCPU, ctlMemory)
	switch {
	case cfg.Version == "v2" && sys.V2 == "":
		return nil, fmt.Errorf("%w: cgroup v2 requested but no cgroup2 file system is mounted", ErrUnavailable)
	case cfg.Version == "v2":
		m.version = V2
	case cfg.Version == "v1" && !v1ok:
		return nil, fmt.Errorf("%w: cgroup v1 requested but the cpu and memory controllers are not mounted as v1 (mode %s)", ErrUnavailable, sys.Mode)
	case cfg.Version == "v1", !v2ok && v1ok:
		m.version = V1
	case v2ok:
		m.version = V2
	default:
		return nil, fmt.Errorf("%w: no cpu and memory controllers (mode %s, v1 %v, v2 controllers %v)",
			ErrUnavailable, sys.Mode, keys(sys.V1), sys.V2Controllers)
	}
	own, err := readProcCgroups(filepath.Join(proc, "self", "cgroup"))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	m.hiers = map[string]hierarchy{}
	if m.version == V2 {
		m.hiers[""] = hierarchy{mount: sys.V2, base: m.basePath(own[""])}
	} else {
		for ctl, mount := range sys.V1 {
			m.hiers[ctl] = hierarchy{mount: mount, base: m.basePath(own[ctl])}
		}
	}
	for ctl, h := range m.hiers {
		if err := os.MkdirAll(filepath.Join(h.mount, h.base), 0o755); err != nil {
			if ctl == ctlPids || ctl == ctlFreezer || (ctl == ctlCPUAcct && m.hiers[ctlCPU] != (hierarchy{})) {
				// Optional on v1: go on without it.
				m.log.Warn("cgroup controller unusable; going on without it", "controller", ctl, "err", err)
				delete(m.hiers, ctl)
				continue
			}
			return nil, fmt.Errorf("%w: creating parent group: %w", ErrUnavailable, err)
		}
	}
	m.log.Info("cgroups in use", "mode", sys.Mode.String(), "version", m.version.String(), "parent", m.cfg.Parent,
		"controllers", m.controllers())
	return m, nil
}

func hasV1(sys System) bool {
	_, mem := sys.V1[ctlMemory]
	_, cpu := sys.V1[ctlCPU]
	_, acct := sys.V1[ctlCPUAcct]
	return mem && (cpu || acct)
}

// basePath returns the parent group's path in a hierarchy where the host
// currently sits at own. A host already moved into parent/host (a
// re-executed host) keeps the same parent rather than nesting again.
func (m *Manager) basePath(own string) string {
	if strings.HasPrefix(m.cfg.Parent, "/") {
		return path.Clean(m.cfg.Parent)
	}
	if own == "" {
		own = "/"
	}
	own = strings.TrimSuffix(path.Clean(own), "/"+path.Clean(m.cfg.Parent)+"/"+HostGroup)
	return path.Join(own, m.cfg.Parent)
}

// System returns the detected layout.
func (m *Manager) System() System { return m.sys }

// Version returns the cgroup version in use.
func (m *Manager) Version() Version { return m.version }

// Create makes (or reuses) the group name under the parent and sets its
// limits.
func (m *Manager) Create(name string, l Limits) (*Group, error) {
	if !nameRE.MatchString(name) || name == HostGroup {
		return nil, fmt.Errorf("cgroup: invalid group name %q (want lower-case letters, digits, . _ -, not %q)", name, HostGroup)
	}
	return m.create(name, l)
}

func (m *Manager) create(name string, l Limits) (*Group, error) {
	g := &Group{m: m, name: name, dirs: map[string]string{}, rels: map[string]string{}}
	for ctl, h := range m.hiers {
		g.rels[ctl] = path.Join(h.base, name)
		g.dirs[ctl] = filepath.Join(h.mount, g.rels[ctl])
	}
	var err error
	if m.version == V2 {
		err = g.createV2(l)
	} else {
		err = g.createV1(l)
	}
	if err != nil {
		return nil, fmt.Errorf("creating group %s: %w", name, err)
	}
	g.limits = l
	m.mu.Lock()
	m.groups[name] = g
	m.mu.Unlock()
	return g, nil
}

// EnterHost creates the host's group and moves the whole host process into
// it. Call it once at start, after CleanupStale and before any plugin group
// is created (on cgroup v2 the host must leave its former group before
// controllers can be enabled below it).
func (m *Manager) EnterHost(l Limits) (*Group, error) {
	g, err := m.create(HostGroup, Limits{})
	if err != nil {
		return nil, err
	}
	if err := g.addProc(os.Getpid()); err != nil {
		return nil, fmt.Errorf("moving the host into %s: %w", g.rels, err)
	}
	if l != (Limits{}) {
		if err := g.Update(l); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// Group is one cgroup (one directory per hierarchy) under the parent.
type Group struct {
	m    *Manager
	name string
	// dirs and rels map a controller (v1) or "" (v2) to the group's
	// directory and to its path as /proc/PID/cgroup shows it.
	dirs map[string]string
	rels map[string]string
	v1   v1Handle
	v2   v2Handle
	// stats keeps the accounting files open between readings.
	stats statFiles

	mu      sync.Mutex
	limits  Limits
	deleted bool
}

// Name returns the group's name.
func (g *Group) Name() string { return g.name }

// Path returns the group's directory in the memory hierarchy (v1) or the
// unified hierarchy (v2), for logs.
func (g *Group) Path() string {
	if d, ok := g.dirs[""]; ok {
		return d
	}
	return g.dirs[ctlMemory]
}

// Limits returns the limits last set.
func (g *Group) Limits() Limits {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.limits
}

// Update changes the group's limits in place; running processes stay.
func (g *Group) Update(l Limits) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.deleted {
		return ErrDeleted
	}
	var err error
	if g.m.version == V2 {
		err = g.updateV2(l)
	} else {
		err = g.updateV1(l)
	}
	if err != nil {
		return fmt.Errorf("updating limits of group %s: %w", g.name, err)
	}
	g.limits = l
	return nil
}

// Stats reads the group's accounting.
func (g *Group) Stats() (Stats, error) {
	g.mu.Lock()
	deleted := g.deleted
	g.mu.Unlock()
	if deleted {
		return Stats{}, ErrDeleted
	}
	s, err := g.stats.read(g)
	if err != nil {
		return Stats{}, fmt.Errorf("reading stats of group %s: %w", g.name, err)
	}
	return s, nil
}

// Procs lists the processes in the group and its sub-groups.
func (g *Group) Procs() ([]int, error) {
	ctl := g.primary()
	return readPids(g.dirs[ctl], true)
}

// primary returns the hierarchy used to list processes.
func (g *Group) primary() string {
	if _, ok := g.dirs[""]; ok {
		return ""
	}
	for _, c := range []string{ctlMemory, ctlPids, ctlCPU, ctlCPUAcct} {
		if _, ok := g.dirs[c]; ok {
			return c
		}
	}
	return ctlMemory
}

// Kill sends SIGKILL to every process in the group: the plugin and every
// child it forked. It freezes the group first where it can, so nothing forks
// while it kills. The host's own process is never signalled.
func (g *Group) Kill() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.deleted {
		return ErrDeleted
	}
	if err := g.kill(); err != nil {
		return fmt.Errorf("killing group %s: %w", g.name, err)
	}
	return nil
}

// Delete kills what is left in the group, waits for it to empty and removes
// its directories. It is idempotent. The host's own group cannot be deleted
// while the host is in it.
func (g *Group) Delete() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.deleted {
		return nil
	}
	if g.name == HostGroup {
		if pids, _ := g.procsLocked(); containsSelf(pids) {
			return fmt.Errorf("cgroup: refusing to delete the host's own group %s while the host is in it", g.Path())
		}
	}
	if g.name != HostGroup {
		if err := g.kill(); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("deleting group %s: %w", g.name, err)
		}
	}
	if err := g.waitEmpty(2 * time.Second); err != nil {
		return fmt.Errorf("deleting group %s: %w", g.name, err)
	}
	g.stats.mu.Lock()
	g.stats.close()
	g.stats.mu.Unlock()
	var err error
	if g.m.version == V2 {
		err = g.deleteV2()
	} else {
		err = g.deleteV1()
	}
	if err != nil {
		return fmt.Errorf("deleting group %s: %w", g.name, err)
	}
	g.deleted = true
	g.m.mu.Lock()
	if g.m.groups[g.name] == g {
		delete(g.m.groups, g.name)
	}
	g.m.mu.Unlock()
	return nil
}

func (g *Group) procsLocked() ([]int, error) { return readPids(g.dirs[g.primary()], true) }

// waitEmpty waits until no hierarchy of the group lists a process. Every
// hierarchy is checked, not only the primary one: on cgroup v1 a thread
// moved on its own (the spawn thread) and then exiting stays listed in the
// hierarchies it joined until the kernel releases it, and rmdir fails
// until then.
func (g *Group) waitEmpty(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var pids []int
		for _, d := range g.dirs {
			p, err := readPids(d, true)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			pids = append(pids, p...)
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still in the group after %s", pids, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func containsSelf(pids []int) bool {
	self := os.Getpid()
	for _, p := range pids {
		if p == self {
			return true
		}
	}
	return false
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// ParentDirs returns the parent group's directory in each hierarchy in use.
func (m *Manager) ParentDirs() []string {
	var out []string
	for _, h := range m.hiers {
		d := filepath.Join(h.mount, h.base)
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out
}

// RemoveAll deletes every group under the parent, this Manager's and stale
// ones alike, killing their processes, and then the parent itself: for
// uninstalling, and for tests. The host's own group is kept while the host
// is in it, and the parent with it.
func (m *Manager) RemoveAll() error {
	m.mu.Lock()
	groups := make([]*Group, 0, len(m.groups))
	for _, g := range m.groups {
		groups = append(groups, g)
	}
	m.mu.Unlock()
	var errs []error
	for _, g := range groups {
		if g.name == HostGroup {
			if pids, _ := g.Procs(); containsSelf(pids) {
				continue
			}
		}
		errs = append(errs, g.Delete())
	}
	_, err := m.CleanupStale()
	errs = append(errs, err)
	for _, d := range m.ParentDirs() {
		if entries, err := os.ReadDir(d); err == nil && hasDir(entries) {
			continue // the host's group is still there
		}
		errs = append(errs, rmdir(d))
	}
	return errors.Join(errs...)
}

func hasDir(entries []os.DirEntry) bool {
	for _, e := range entries {
		if e.IsDir() {
			return true
		}
	}
	return false
}

// controllers lists the v1 hierarchies in use, or the v2 controllers.
func (m *Manager) controllers() []string {
	if m.version == V2 {
		return m.sys.V2Controllers
	}
	out := keys(m.hiers)
	slices.Sort(out)
	return out
}
