package selfupdate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vigil-hids/vigil/api"
)

// Recover repairs what an interrupted update can leave next to the
// target: a stale staged binary is removed, and a missing target (the gap
// between minio/selfupdate's two renames, or a hand-made mess) is restored
// from the kept previous binary or from selfupdate's .old copy. It reports
// what it repaired.
func (u *Updater) Recover() (string, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	var did []string
	for _, stale := range []string{u.newPath(), u.sibling(".restore"), u.PreviousPath() + ".tmp"} {
		if err := os.Remove(stale); err == nil {
			did = append(did, "removed stale "+stale)
		}
	}
	if _, err := os.Stat(u.cfg.Target); errors.Is(err, os.ErrNotExist) {
		restored := false
		for _, from := range []string{u.oldPath(), u.PreviousPath()} {
			if _, err := os.Stat(from); err != nil {
				continue
			}
			if err := u.restorePrevious(from); err != nil {
				return "", err
			}
			did = append(did, fmt.Sprintf("target %s was missing, restored from %s", u.cfg.Target, from))
			restored = true
			break
		}
		if !restored {
			return "", fmt.Errorf("selfupdate: target %s is missing and no kept binary (%s, %s) exists", u.cfg.Target, u.oldPath(), u.PreviousPath())
		}
	}
	msg := ""
	for i, d := range did {
		if i > 0 {
			msg += "; "
		}
		msg += d
	}
	return msg, nil
}

// Outcome is what Startup decided.
type Outcome struct {
	// Trial is set when this run is a trial: run Gate.
	Trial *Trial
	// RolledBack is set when Startup restored the previous binary: the
	// caller must restart into the target now, without starting anything.
	RolledBack bool
	// Last is the latest self-update result, for the registration.
	Last *api.UpdateStatus
}

// Startup runs first at every start, before the config is read: it
// repairs the files (Recover) and decides from the marker whether this run
// is a trial, a crashed trial to roll back, or the previous version back
// after a rollback.
func (u *Updater) Startup() (Outcome, error) {
	if msg, err := u.Recover(); err != nil {
		return Outcome{}, err
	} else if msg != "" {
		u.log.Warn("repaired an interrupted update", "what", msg)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	st, err := u.State()
	if err != nil {
		return Outcome{}, err
	}
	t := st.Trial
	now := u.cfg.Clock.Now().UTC()
	switch {
	case t == nil:
		return Outcome{Last: st.Last}, nil
	case t.Version == u.cfg.Running:
		t.Starts++
		if t.Starts > 1 {
			reason := fmt.Sprintf("vigil-host %s stopped or crashed before it became healthy (start %d of its trial)", t.Version, t.Starts)
			return u.rollbackLocked(st, reason)
		}
		if now.After(t.Deadline) {
			return u.rollbackLocked(st, fmt.Sprintf("vigil-host %s started after its trial deadline %s", t.Version, t.Deadline.Format(time.RFC3339)))
		}
		// The window counts from the trial's first start.
		t.Deadline = now.Add(u.cfg.Window)
		if err := writeState(u.StatePath(), st); err != nil {
			return Outcome{}, err
		}
		u.log.Info("trial of a new vigil-host", "version", t.Version, "previous", t.Previous, "deadline", t.Deadline)
		trial := *t
		return Outcome{Trial: &trial, Last: st.Last}, nil
	case t.Version != u.cfg.Running && t.Starts == 0:
		// The swap did not happen (or did not reach the disk): the old
		// binary runs. Nothing to undo; the desired state retries.
		st.Trial = nil
		st.Last = &api.UpdateStatus{Target: t.Version, Running: u.cfg.Running, State: api.UpdateFailed,
			Error: "install interrupted before the new binary started", At: now}
	default:
		// The trial ran, and now another binary runs: the previous one,
		// restored by a rollback (ours, or an operator's).
		reason := fmt.Sprintf("vigil-host %s did not pass its trial, %s is running again", t.Version, u.cfg.Running)
		if st.Last != nil && st.Last.State == api.UpdateRolledBack && st.Last.Target == t.Version {
			reason = st.Last.Error
		}
		st.Trial = nil
		st.Last = &api.UpdateStatus{Target: t.Version, Running: u.cfg.Running, State: api.UpdateRolledBack, Error: reason, At: now}
		st.Failed = addFailed(st.Failed, t.Version, reason)
	}
	if err := writeState(u.StatePath(), st); err != nil {
		return Outcome{}, err
	}
	return Outcome{Last: st.Last}, nil
}

// rollbackLocked restores the previous binary, then records why. The
// binary goes first: a crash between the two leaves the marker with a start
// count above zero and the previous binary running, which Startup reads as
// a rollback.
func (u *Updater) rollbackLocked(st State, reason string) (Outcome, error) {
	t := st.Trial
	u.log.Error("rolling back to the previous vigil-host", "failed", t.Version, "previous", t.Previous, "reason", reason)
	if err := u.restorePrevious(t.PreviousPath); err != nil {
		return Outcome{}, err
	}
	now := u.cfg.Clock.Now().UTC()
	st.Last = &api.UpdateStatus{Target: t.Version, Running: t.Previous, State: api.UpdateRolledBack, Error: reason, At: now}
	// The marker stays (Starts > 0): the previous binary clears it when it
	// starts, so a crash right here still ends in the same place.
	if t.Starts == 0 {
		t.Starts = 1
	}
	if err := writeState(u.StatePath(), st); err != nil {
		return Outcome{}, err
	}
	return Outcome{RolledBack: true, Last: st.Last}, nil
}

func addFailed(m map[string]string, version, reason string) map[string]string {
	if m == nil {
		m = map[string]string{}
	}
	m[version] = reason
	// Keep the list short: the newest few versions are what a desired
	// state can still ask for.
	for len(m) > 16 {
		for k := range m {
			if k != version {
				delete(m, k)
				break
			}
		}
	}
	return m
}

// Gate watches a trial run: healthy must return nil at every check for
// Settle in a row, before the trial's deadline. Passing removes the marker
// and records "installed"; failing restores the previous binary and
// returns ErrRolledBack (the caller restarts into it). A cancelled ctx
// (the host stopping) returns ctx.Err() and leaves the marker: the next
// start counts as a second start of the trial and rolls back.
func (u *Updater) Gate(ctx context.Context, t Trial, healthy func() error) error {
	clock := u.cfg.Clock
	var since time.Time
	last := errors.New("no health check ran")
	for {
		now := clock.Now()
		if err := healthy(); err != nil {
			since, last = time.Time{}, err
		} else {
			if since.IsZero() {
				since = now
				u.log.Info("new vigil-host healthy, settling", "version", t.Version, "settle", u.cfg.Settle)
			}
			if now.Sub(since) >= u.cfg.Settle {
				return u.pass(t)
			}
		}
		if now.After(t.Deadline) {
			return u.fail(t, fmt.Sprintf("vigil-host %s not healthy within its window (deadline %s): %v",
				t.Version, t.Deadline.UTC().Format(time.RFC3339), last))
		}
		if err := clock.Sleep(ctx, u.cfg.CheckEvery); err != nil {
			return err
		}
	}
}

func (u *Updater) pass(t Trial) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	st, err := u.State()
	if err != nil {
		return err
	}
	st.Trial = nil
	st.Last = &api.UpdateStatus{Target: t.Version, Running: t.Version, State: api.UpdateInstalled, At: u.cfg.Clock.Now().UTC()}
	if err := writeState(u.StatePath(), st); err != nil {
		return err
	}
	u.log.Info("new vigil-host passed its health gate", "version", t.Version, "previous", t.Previous,
		"kept", t.PreviousPath, "since_install", u.cfg.Clock.Now().Sub(t.InstalledAt).Round(time.Millisecond))
	return nil
}

func (u *Updater) fail(t Trial, reason string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	st, err := u.State()
	if err != nil {
		return err
	}
	if st.Trial == nil {
		st.Trial = &t
	}
	if _, err := u.rollbackLocked(st, reason); err != nil {
		return err
	}
	return fmt.Errorf("%w: %s", ErrRolledBack, reason)
}
