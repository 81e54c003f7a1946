package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// CleanupStale removes the groups a previous run left under the parent:
// it kills the processes still in them (plugins that outlived a killed
// host) and removes their directories. It keeps the groups this Manager
// made and a group the host itself is in (a re-executed host). It returns
// the names of the groups it removed.
func (m *Manager) CleanupStale() ([]string, error) {
	m.mu.Lock()
	live := keys(m.groups)
	m.mu.Unlock()
	var removed []string
	var errs []error
	for ctl, h := range m.hiers {
		parent := filepath.Join(h.mount, h.base)
		entries, err := os.ReadDir(parent)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing %s: %w", parent, err))
			continue
		}
		for _, e := range entries {
			if !e.IsDir() || slices.Contains(live, e.Name()) {
				continue
			}
			dir := filepath.Join(parent, e.Name())
			pids, err := readPids(dir, true)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if containsSelf(pids) {
				continue
			}
			if err := removeTree(dir, ctl); err != nil {
				errs = append(errs, fmt.Errorf("removing stale group %s: %w", dir, err))
				continue
			}
			if !slices.Contains(removed, e.Name()) {
				removed = append(removed, e.Name())
			}
		}
	}
	if len(removed) > 0 {
		m.log.Info("removed stale cgroups of a previous run", "groups", removed)
	}
	return removed, errors.Join(errs...)
}

// removeTree kills every process under dir and removes dir and its
// sub-groups, deepest first.
func removeTree(dir, ctl string) error {
	if ctl == "" {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		n, err := signalAll(dir)
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes still running in %s after %s", dir, 2*time.Second)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var dirs []string
	if err := filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	}); err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := rmdir(dirs[i]); err != nil {
			return err
		}
	}
	return nil
}

// rmdir removes a cgroup directory, retrying while the kernel still
// releases the last exited tasks (EBUSY).
func rmdir(dir string) error {
	delay := 5 * time.Millisecond
	for i := 0; ; i++ {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || i == 8 {
			return fmt.Errorf("removing %s: %w", dir, err)
		}
		time.Sleep(delay)
		delay *= 2
	}
}
