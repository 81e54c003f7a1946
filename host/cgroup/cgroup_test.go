package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// childEnv selects what the test binary does when it is re-executed as a
// child inside a group (TestMain).
const childEnv = "VIGIL_CGROUP_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(m.Run())
	case "spin":
		for {
		}
	case "hog":
		// Wait until the test closes stdin (it has checked which group we
		// are in: on v1 a dying process shows in the root groups), then
		// grow by 1 MiB at a time, touching every page, until the group's
		// memory limit OOM-kills us.
		_, _ = io.Copy(io.Discard, os.Stdin)
		var keep [][]byte
		for range 4096 {
			b := make([]byte, 1<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			keep = append(keep, b)
		}
		fmt.Println("survived", len(keep))
		os.Exit(3)
	case "fork":
		// Start three grandchildren and report their pids.
		for range 3 {
			c := exec.Command("sleep", "1000")
			if err := c.Start(); err != nil {
				os.Exit(4)
			}
			fmt.Println(c.Process.Pid)
		}
		select {}
	case "sleep":
		time.Sleep(time.Hour)
	}
	os.Exit(2)
}

// spawner runs functions on one goroutine locked to its OS thread, like the
// host's spawner.
type spawner chan func()

func newSpawner(t *testing.T) spawner {
	s := make(spawner)
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		for f := range s {
			f()
		}
	}()
	t.Cleanup(func() { close(s); <-done })
	return s
}

func (s spawner) do(f func()) {
	done := make(chan struct{})
	s <- func() { defer close(done); f() }
	<-done
}

// start starts the test binary in a child mode inside g, from the spawner
// thread, and checks that the spawner thread went back to its cgroups.
// child is a started process reaped in the background, so tests and their
// cleanup can both wait for it.
type child struct {
	*exec.Cmd
	done chan struct{}
	err  error
}

// Wait waits for the process to exit and returns its exit error.
func (c *child) Wait() error {
	<-c.done
	return c.err
}

func start(t *testing.T, s spawner, g *Group, mode string, opts ...func(*exec.Cmd)) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	for _, o := range opts {
		o(cmd)
	}
	var err error
	s.do(func() {
		tid := unix.Gettid()
		before, _ := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/cgroup", tid))
		restore, perr := g.PrepareSpawn(cmd)
		if perr != nil {
			err = perr
			return
		}
		err = errors.Join(cmd.Start(), restore())
		after, _ := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/cgroup", tid))
		if string(before) != string(after) {
			err = errors.Join(err, fmt.Errorf("spawner thread not restored:\nbefore %s\nafter %s", before, after))
		}
	})
	if err != nil {
		if cmd.Process != nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		t.Fatal(err)
	}
	c := &child{Cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.err = cmd.Wait()
	}()
	t.Cleanup(func() { cmd.Process.Kill(); c.Wait() })
	if err := g.Verify(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	return c
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups (CI runs these as root)")
	}
}

// newTestManager makes a manager under a parent unique to this test, nested
// under the test's own cgroup, and removes the parent afterwards.
func newTestManager(t *testing.T, version string) *Manager {
	t.Helper()
	requireRoot(t)
	parent := fmt.Sprintf("vigil-test-%d-%s", os.Getpid(), strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-"))
	m, err := NewManager(Config{Parent: parent, Version: version}, nil)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	t.Cleanup(func() {
		if err := m.RemoveAll(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		for _, d := range m.ParentDirs() {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("cleanup: %s left behind (%v)", d, err)
			}
		}
	})
	return m
}

// TestV1CPUQuota runs a busy loop in a group capped at 5% of one core and
// measures its usage from the group's accounting.
func TestV1CPUQuota(t *testing.T) {
	m := newTestManager(t, "v1")
	g, err := m.Create("cpuhog", Limits{CPUQuotaPercent: 5})
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(g.dirs[ctlCPU], "cpu.cfs_quota_us")); got != "5000" {
		t.Fatalf("cpu.cfs_quota_us = %q, want 5000", got)
	}
	s := newSpawner(t)
	start(t, s, g, "spin")
	time.Sleep(300 * time.Millisecond) // let it settle into throttling
	// The wall-clock window brackets both reads: a test delayed between a
	// read and its clock reading (a loaded box) only lowers the figure,
	// never adds CPU time the window did not count.
	t0 := time.Now()
	before, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	after, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	usage := 100 * float64(after.CPU-before.CPU) / float64(time.Since(t0))
	t.Logf("busy loop capped at 5%%: measured %.2f%% of one core, throttled %d periods", usage, after.ThrottledPeriods)
	if usage > 5*1.1 {
		t.Errorf("usage %.2f%% exceeds the 5%% quota + 10%%", usage)
	}
	if usage < 0.1 {
		t.Errorf("usage %.2f%%: the busy loop did not run in the group", usage)
	}
	if after.ThrottledPeriods == 0 {
		t.Errorf("no throttled periods reported for a busy loop over its quota")
	}
}

// TestV1MemoryOOM runs a memory hog in a group limited to 32 MiB: the kernel
// kills it inside its own group, the test process lives on, and the group
// counts the OOM kill.
func TestV1MemoryOOM(t *testing.T) {
	m := newTestManager(t, "v1")
	g, err := m.Create("memhog", Limits{MemoryBytes: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// The hog grows once start has verified its group (closing w): on v1
	// a process already OOM-killed shows in the root groups.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := start(t, newSpawner(t), g, "hog", func(c *exec.Cmd) { c.Stdin = r })
	r.Close()
	w.Close()
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("hog exited with %v, want killed", err)
	}
	if ws := exit.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("hog exit status %v, want SIGKILL by the OOM killer", ws)
	}
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.OOMKills < 1 {
		t.Errorf("OOMKills = %d, want at least 1", st.OOMKills)
	}
}

func TestKillKillsChildren(t *testing.T) {
	for _, version := range testVersions(t) {
		t.Run(version, func(t *testing.T) {
			m := newTestManager(t, version)
			g, err := m.Create("forker", Limits{})
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), childEnv+"=fork")
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			s := newSpawner(t)
			s.do(func() {
				restore, perr := g.PrepareSpawn(cmd)
				if perr != nil {
					err = perr
					return
				}
				err = errors.Join(cmd.Start(), restore())
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			var kids []int
			sc := bufio.NewScanner(out)
			for len(kids) < 3 && sc.Scan() {
				pid, err := strconv.Atoi(sc.Text())
				if err != nil {
					t.Fatal(err)
				}
				kids = append(kids, pid)
			}
			if len(kids) != 3 {
				t.Fatalf("got %d grandchildren, want 3", len(kids))
			}
			procs, err := g.Procs()
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range append(kids, cmd.Process.Pid) {
				if !slices.Contains(procs, k) {
					t.Fatalf("pid %d not in the group's procs %v", k, procs)
				}
			}
			if err := g.Kill(); err != nil {
				t.Fatal(err)
			}
			cmd.Wait()
			if err := g.waitEmpty(5 * time.Second); err != nil {
				t.Fatal(err)
			}
			for _, k := range kids {
				if alive(k) {
					t.Errorf("grandchild %d still alive after Kill", k)
				}
			}
			dirs := g.dirs
			if err := g.Delete(); err != nil {
				t.Fatal(err)
			}
			for _, d := range dirs {
				if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s still exists after Delete (%v)", d, err)
				}
			}
			if err := g.Delete(); err != nil {
				t.Errorf("second Delete: %v", err)
			}
			if _, err := g.Stats(); !errors.Is(err, ErrDeleted) {
				t.Errorf("Stats after Delete: %v, want ErrDeleted", err)
			}
		})
	}
}

// TestDeleteKillsRemaining deletes a group with a live process in it.
func TestDeleteKillsRemaining(t *testing.T) {
	for _, version := range testVersions(t) {
		t.Run(version, func(t *testing.T) {
			m := newTestManager(t, version)
			g, err := m.Create("sleeper", Limits{})
			if err != nil {
				t.Fatal(err)
			}
			start(t, newSpawner(t), g, "sleep")
			if err := g.Delete(); err != nil {
				t.Fatal(err)
			}
			for _, d := range g.dirs {
				if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s still exists after Delete", d)
				}
			}
		})
	}
}

func TestCleanupStale(t *testing.T) {
	for _, version := range testVersions(t) {
		t.Run(version, func(t *testing.T) {
			m := newTestManager(t, version)
			old, err := m.Create("oldplugin", Limits{})
			if err != nil {
				t.Fatal(err)
			}
			cmd := start(t, newSpawner(t), old, "sleep")
			if _, err := m.Create("nested", Limits{}); err != nil {
				t.Fatal(err)
			}
			// A new run: a fresh manager over the same parent.
			m2, err := NewManager(m.cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			keep, err := m2.Create("current", Limits{})
			if err != nil {
				t.Fatal(err)
			}
			removed, err := m2.CleanupStale()
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(removed)
			if !slices.Equal(removed, []string{"nested", "oldplugin"}) {
				t.Errorf("removed %v, want [nested oldplugin]", removed)
			}
			for _, d := range old.dirs {
				if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("stale %s still exists", d)
				}
			}
			if alive(cmd.Process.Pid) {
				t.Errorf("process %d of the stale group still alive", cmd.Process.Pid)
			}
			for _, d := range keep.dirs {
				if _, err := os.Stat(d); err != nil {
					t.Errorf("current group removed: %v", err)
				}
			}
			if err := keep.Delete(); err != nil {
				t.Fatal(err)
			}
			m.mu.Lock()
			clear(m.groups) // already removed from disk
			m.mu.Unlock()
		})
	}
}

// TestEnterHost moves the test process into the host group and back.
func TestEnterHost(t *testing.T) {
	m := newTestManager(t, "v1")
	own, err := readProcCgroups("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	host, err := m.EnterHost(Limits{MemoryBytes: 4 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for ctl, h := range m.hiers {
			if err := os.WriteFile(filepath.Join(h.mount, own[ctl], "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
				t.Errorf("moving back: %v", err)
			}
		}
		if err := host.Delete(); err != nil {
			t.Errorf("deleting host group: %v", err)
		}
	})
	if err := host.Verify(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if err := host.Kill(); err == nil {
		t.Fatal("Kill on the host's own group succeeded")
	}
	if err := host.Delete(); err == nil {
		t.Fatal("Delete of the host's own group succeeded while the host is in it")
	}
	// A plugin spawned now starts in its group, not the host's.
	g, err := m.Create("plugin", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	start(t, newSpawner(t), g, "sleep")
}

// TestV2Unified exercises the v2 path on the real cgroup2 mount. On this
// hybrid machine the unified hierarchy holds no cpu or memory controller
// (they are bound to v1), so the group gets no limits here: the test covers
// placement through clone3 CLONE_INTO_CGROUP, Verify, accounting, kill via
// cgroup.kill and removal. Limits on v2 are covered by TestV2FakeLayout.
func TestV2Unified(t *testing.T) {
	requireRoot(t)
	sys, err := Detect("")
	if err != nil {
		t.Fatal(err)
	}
	if sys.V2 == "" {
		t.Skip("no cgroup2 file system mounted")
	}
	m := newTestManager(t, "v2")
	var l Limits
	if sys.HasV2(ctlCPU, ctlMemory) {
		l = Limits{CPUQuotaPercent: 5, MemoryBytes: 64 << 20, Pids: 64}
	} else {
		if _, err := m.Create("limited", Limits{CPUQuotaPercent: 5}); !errors.Is(err, ErrUnavailable) {
			t.Errorf("a CPU quota without the v2 cpu controller: err = %v, want ErrUnavailable", err)
		}
		t.Logf("cgroup2 controllers at %s: %v; running without limits", sys.V2, sys.V2Controllers)
	}
	g, err := m.Create("plugin", l)
	if err != nil {
		t.Fatal(err)
	}
	cmd := start(t, newSpawner(t), g, "spin")
	if cmd.SysProcAttr == nil || !cmd.SysProcAttr.UseCgroupFD {
		t.Fatal("PrepareSpawn did not set UseCgroupFD")
	}
	var st Stats
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if st, err = g.Stats(); err != nil {
			t.Fatal(err)
		}
		if st.CPU > 0 {
			break
		}
	}
	if st.CPU == 0 {
		t.Errorf("no CPU time accounted to a busy loop in the group")
	}
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Fatal("busy loop exited cleanly after Kill")
	}
	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(g.dirs[""]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still exists after Delete", g.dirs[""])
	}
}

func testVersions(t *testing.T) []string {
	sys, err := Detect("")
	if err != nil {
		t.Fatal(err)
	}
	var vs []string
	if hasV1(sys) {
		vs = append(vs, "v1")
	}
	if sys.V2 != "" {
		vs = append(vs, "v2")
	}
	return vs
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie is dead; it only waits for its parent to reap it.
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestRestoreFromAnotherGoroutine: with go-plugin the spawner only regains
// control after the handshake, so restore may be called from elsewhere; it
// still moves the spawner thread back, and only once.
func TestRestoreFromAnotherGoroutine(t *testing.T) {
	m := newTestManager(t, "")
	g, err := m.Create("restore", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	s := newSpawner(t)
	cmd := exec.Command("sleep", "1000")
	var restore func() error
	var tid int
	var before []byte
	s.do(func() {
		tid = unix.Gettid()
		before, _ = os.ReadFile(fmt.Sprintf("/proc/self/task/%d/cgroup", tid))
		if restore, err = g.PrepareSpawn(cmd); err == nil {
			err = cmd.Start()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := g.Verify(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if err := restore(); err != nil {
		t.Fatalf("second restore: %v", err)
	}
	var after []byte
	s.do(func() { after, _ = os.ReadFile(fmt.Sprintf("/proc/self/task/%d/cgroup", tid)) })
	if string(before) != string(after) {
		t.Fatalf("spawner thread not restored:\nbefore %s\nafter %s", before, after)
	}
}
