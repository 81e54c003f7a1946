package cgroup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// PrepareSpawn arranges for the next process cmd starts to begin life inside
// the group. It must run on the host's spawner thread (a goroutine locked to
// its OS thread with runtime.LockOSThread before its first PrepareSpawn, and
// never unlocked), and restore must be called as soon as cmd.Start (or
// go-plugin's Client.Start) has returned, whether it failed or not. restore
// may run on any goroutine (it names the spawner thread by its id), and a
// second call does nothing and returns the first call's result.
//
// go-plugin's Client.Start returns only after the plugin's handshake, so on
// v1 the spawner thread stays in the plugin's groups until then. That is
// harmless: the thread only waits, its little CPU time counts against the
// plugin's quota, and it takes one of the plugin's tasks (pids).
//
// v2: sets cmd.SysProcAttr.UseCgroupFD and CgroupFD (clone3 with
// CLONE_INTO_CGROUP); restore closes the descriptor.
//
// v1: moves the calling thread into the group in every hierarchy (the child
// inherits the forking thread's cgroups); restore moves it back to the
// cgroups it was in. The thread being locked before its first move
// matters: a locked thread never clones new runtime threads itself (Go asks
// a template thread, which LockOSThread starts while the spawner thread is
// still in the host's groups), so no runtime thread is born inside a
// plugin's group.
func (g *Group) PrepareSpawn(cmd *exec.Cmd) (restore func() error, err error) {
	g.mu.Lock()
	deleted := g.deleted
	g.mu.Unlock()
	if deleted {
		return nil, ErrDeleted
	}
	if g.m.version == V2 {
		return g.prepareV2(cmd)
	}
	return g.prepareV1()
}

func (g *Group) prepareV2(cmd *exec.Cmd) (func() error, error) {
	fd, err := unix.Open(g.dirs[""], unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening group %s: %w", g.name, err)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = fd
	return sync.OnceValue(func() error { return unix.Close(fd) }), nil
}

func (g *Group) prepareV1() (func() error, error) {
	tid := unix.Gettid()
	prev, err := readProcCgroups(filepath.Join(g.m.proc, "self", "task", strconv.Itoa(tid), "cgroup"))
	if err != nil {
		return nil, fmt.Errorf("reading the spawner thread's cgroups: %w", err)
	}
	type move struct{ ctl, back string }
	var moved []move
	restore := func() error {
		var errs []error
		for i := len(moved) - 1; i >= 0; i-- {
			m := moved[i]
			if err := writeTask(m.back, tid); err != nil {
				errs = append(errs, fmt.Errorf("moving spawner thread %d back to %s: %w", tid, m.back, err))
			}
		}
		moved = nil
		return errors.Join(errs...)
	}
	for _, ctl := range v1Controllers {
		dir, ok := g.dirs[ctl]
		if !ok {
			continue
		}
		back := filepath.Join(g.m.hiers[ctl].mount, prev[ctl])
		if err := writeTask(dir, tid); err != nil {
			return nil, errors.Join(fmt.Errorf("moving spawner thread %d into %s: %w", tid, dir, err), restore())
		}
		moved = append(moved, move{ctl, back})
	}
	return sync.OnceValue(restore), nil
}

func writeTask(dir string, tid int) error {
	return os.WriteFile(filepath.Join(dir, "tasks"), []byte(strconv.Itoa(tid)), 0)
}

// Verify checks that pid sits in the group in every hierarchy the group
// spans.
func (g *Group) Verify(pid int) error {
	got, err := readProcCgroups(filepath.Join(g.m.proc, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return fmt.Errorf("verifying pid %d: %w", pid, err)
	}
	for ctl, want := range g.rels {
		if got[ctl] != want {
			name := ctl
			if name == "" {
				name = "unified"
			}
			return fmt.Errorf("%w: pid %d is in %s:%s, want %s", ErrNotInGroup, pid, name, got[ctl], want)
		}
	}
	return nil
}

// addProc moves a whole process (all its threads) into the group.
func (g *Group) addProc(pid int) error {
	if g.m.version == V2 {
		if err := g.addProcV2(pid); err != nil {
			return err
		}
		if g.name == HostGroup {
			if err := g.enableV2(); err != nil {
				return err
			}
		}
		return nil
	}
	return g.addProcV1(pid)
}

func (g *Group) kill() error {
	if g.name == HostGroup {
		return fmt.Errorf("cgroup: refusing to kill the host's own group")
	}
	if g.m.version == V2 {
		return g.killV2()
	}
	return g.killV1()
}
