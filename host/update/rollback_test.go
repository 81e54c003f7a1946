package update

import (
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/supervisor"
	"github.com/vigil-hids/vigil/signing"
)

// TestRollbackReleaseAndRepair: a signed rollback release of a kept
// version (1.0.0+rollback.1, the same binary) installs over a newer one
// without a download; one whose binary already runs is recorded without a
// restart; an installed binary damaged on disk (SecureConfig refuses to
// start it) is removed, the kept version runs meanwhile, and it is
// fetched again.
func TestRollbackReleaseAndRepair(t *testing.T) {
	w := newWorld(t)
	u := w.updater(t)
	w.plugins.Refresh(tp)
	waitFor(t, "plugin running", func() bool { return w.plugins.status(t).State == supervisor.StateRunning })

	old := release(t, "vigil-testplugin", "1.0.0")
	w.publish("1.0.0", old, nil)
	u.Want(tp, "1.0.0")
	waitState(t, u, "1.0.0", api.UpdateInstalled)
	w.publish("1.1.0", release(t, "vigil-testplugin", "1.1.0"), nil)
	u.Want(tp, "1.1.0")
	waitState(t, u, "1.1.0", api.UpdateInstalled)

	// A plain 1.0.0 is a downgrade; its signed rollback release is not.
	m := w.publish("1.0.0+rollback.1", old, func(m *signing.Manifest) { m.Rollback = true })
	w.mu.Lock()
	delete(w.artifacts, m.SHA256) // the kept 1.0.0 must be used: no download
	w.mu.Unlock()
	u.Want(tp, "1.0.0+rollback.1")
	st := waitState(t, u, "1.0.0+rollback.1", api.UpdateInstalled)
	rbPath := BinaryPath(w.dir, tp, "1.0.0+rollback.1")
	waitFor(t, "1.0.0's binary running as 1.0.0+rollback.1", func() bool {
		s := w.plugins.status(t)
		return s.Path == rbPath && s.State == supervisor.StateRunning
	})
	if st.Running != "1.0.0+rollback.1" || fileSHA256(rbPath) != m.SHA256 {
		t.Fatalf("rollback install: %+v", st)
	}

	// The same binary under a newer rollback version: no restart.
	pid := w.plugins.status(t).PID
	w.publish("1.0.0+rollback.2", old, func(m *signing.Manifest) { m.Rollback = true })
	u.Want(tp, "1.0.0+rollback.2")
	waitState(t, u, "1.0.0+rollback.2", api.UpdateInstalled)
	if s := w.plugins.status(t); s.PID != pid || s.Path != rbPath {
		t.Fatalf("same binary restarted or moved: %+v (pid was %d)", s, pid)
	}
	if !strings.Contains(w.logText(), "recorded without a restart") {
		t.Error("adoption not logged")
	}
	if _, err := os.Stat(rbPath); err != nil {
		t.Fatalf("the adopted binary's directory was collected: %v", err)
	}

	// Damage the installed binary on disk, then make it restart: the
	// checksum refuses it, the host removes it, runs the kept 1.1.0, and
	// fetches 1.0.0+rollback.2 again.
	w.mu.Lock()
	w.artifacts[m.SHA256] = old
	w.mu.Unlock()
	tmp := rbPath + ".bad"
	if err := os.WriteFile(tmp, append(append([]byte{}, old...), 'x'), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, rbPath); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the damaged binary reported", func() bool {
		return strings.Contains(w.logText(), "installed binary damaged")
	})
	st = waitState(t, u, "1.0.0+rollback.2", api.UpdateInstalled)
	fixed := BinaryPath(w.dir, tp, "1.0.0+rollback.2")
	waitFor(t, "the fetched binary running", func() bool {
		s := w.plugins.status(t)
		return s.Path == fixed && s.State == supervisor.StateRunning
	})
	if fileSHA256(fixed) != m.SHA256 {
		t.Fatal("the fetched binary differs")
	}
	if _, err := os.Stat(rbPath); !os.IsNotExist(err) {
		t.Errorf("the damaged binary is still on disk: %v", err)
	}
}
