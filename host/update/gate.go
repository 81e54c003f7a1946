package update

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/coreos/go-semver/semver"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/supervisor"
)

// gate switches plugin to cand and keeps it if it passes the handshake
// and runs for the health window without crashing; otherwise the binary
// that ran before comes back at once.
func (u *Updater) gate(ctx context.Context, plugin, target string, cand Binary) {
	// A plugin stopped on purpose (disabled, emergency stop, breaker) is
	// switched only once it runs again, so that its first start is gated.
	for waited := false; ; waited = true {
		st, _ := u.cfg.Plugins.State(plugin)
		if st != supervisor.StateStopped && st != supervisor.StateHeld && st != supervisor.StateStarting {
			break
		}
		if !waited {
			u.report(plugin, target, api.UpdateHealthCheck, fmt.Errorf("installed on disk; waiting for the plugin to run (state %s) before switching to it", st))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}

	events := make(chan supervisor.Lifecycle, 64)
	cancel := u.cfg.Plugins.Observe(plugin, func(ev supervisor.Lifecycle) {
		select {
		case events <- ev:
		default:
		}
	})
	defer cancel()

	u.mu.Lock()
	prev := u.run[plugin]
	c := cand
	u.run[plugin] = &c
	u.mu.Unlock()
	u.report(plugin, target, api.UpdateHealthCheck, nil)
	u.cfg.Plugins.Refresh(plugin)

	failed, at := u.watch(ctx, events, cand)
	if ctx.Err() != nil {
		// The host is stopping: what is persisted (the previous version)
		// runs at the next start, and the install is tried again then.
		u.mu.Lock()
		u.run[plugin] = prev
		u.mu.Unlock()
		return
	}
	if failed == nil {
		u.commit(plugin, target, cand)
		return
	}

	// Roll back: the previous binary (kept on disk) runs again.
	u.mu.Lock()
	u.run[plugin] = prev
	u.mu.Unlock()
	u.cfg.Plugins.Refresh(plugin)
	back := "did not come back within " + u.cfg.StartTimeout.String()
	deadline := time.After(u.cfg.StartTimeout)
wait:
	for {
		select {
		case ev := <-events:
			if ev.Kind == supervisor.LifeRunning && ev.Path != cand.Path {
				d := ev.At.Sub(at)
				u.mu.Lock()
				if u.rollbacks == nil {
					u.rollbacks = map[string]time.Duration{}
				}
				u.rollbacks[plugin] = d
				u.mu.Unlock()
				back = fmt.Sprintf("running again %s after the failure", d.Round(time.Millisecond))
				break wait
			}
		case <-deadline:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	prevName := "the config file's binary"
	if prev != nil {
		prevName = "version " + prev.Version
	}
	u.collect(plugin)
	u.fail(plugin, target, api.UpdateRolledBack, fmt.Errorf("%w: %s %s: %v; rolled back, %s %s", ErrHealth, plugin, target, failed, prevName, back))
}

// watch waits for cand's first successful start and then the health
// window; it returns why cand failed (nil if it passed) and when.
func (u *Updater) watch(ctx context.Context, events <-chan supervisor.Lifecycle, cand Binary) (error, time.Time) {
	start := time.NewTimer(u.cfg.StartTimeout)
	defer start.Stop()
	var window <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return ctx.Err(), time.Now()
		case <-start.C:
			return fmt.Errorf("it did not start within %s", u.cfg.StartTimeout), time.Now()
		case <-window:
			return nil, time.Time{}
		case ev := <-events:
			if ev.Path != cand.Path {
				continue
			}
			switch ev.Kind {
			case supervisor.LifeRunning:
				if window == nil {
					start.Stop()
					window = time.After(u.cfg.HealthWindow)
				}
			case supervisor.LifeStartFailed:
				return fmt.Errorf("its start failed: %v", ev.Err), ev.At
			case supervisor.LifeDied:
				return fmt.Errorf("it crashed within the %s health window: %v", u.cfg.HealthWindow, ev.Err), ev.At
			}
		}
	}
}

// commit records cand as installed, keeps the versions it replaces for a
// rollback and collects older ones.
func (u *Updater) commit(plugin, target string, cand Binary) {
	u.mu.Lock()
	r := u.record(plugin)
	if r.Current != nil && r.Current.Version != cand.Version {
		prev := []Binary{*r.Current}
		for _, p := range r.Previous {
			if p.Version != cand.Version && p.Version != r.Current.Version {
				prev = append(prev, p)
			}
		}
		r.Previous = prev[:min(len(prev), u.cfg.Keep)]
	}
	r.Current = &cand
	if r.Highest == "" || semver.New(r.Highest).LessThan(*semver.New(cand.Version)) {
		r.Highest = cand.Version
	}
	r.Failed = nil
	delete(u.repairs, plugin)
	err := saveState(u.cfg.StateDir, u.st)
	u.mu.Unlock()
	if err != nil {
		u.log.Error("saving installed releases; the next start runs the previous version", "err", err)
	}
	u.collect(plugin)
	u.report(plugin, target, api.UpdateInstalled, nil)
}

// collect removes versions of plugin beyond the current and Keep previous
// ones.
func (u *Updater) collect(plugin string) {
	u.mu.Lock()
	var keep []string
	if r := u.st.Plugins[plugin]; r != nil {
		if r.Current != nil {
			keep = append(keep, r.Current.Version)
		}
		for _, p := range r.Previous {
			keep = append(keep, p.Version)
		}
		// A binary adopted under another version lives in its first
		// version's directory.
		for _, b := range append([]Binary{}, r.Previous...) {
			keep = append(keep, filepath.Base(filepath.Dir(b.Path)))
		}
		if r.Current != nil {
			keep = append(keep, filepath.Base(filepath.Dir(r.Current.Path)))
		}
	}
	u.mu.Unlock()
	if err := collect(u.cfg.Dir, plugin, keep); err != nil {
		u.log.Warn("collecting old plugin versions", "plugin", plugin, "err", err)
	}
}

// LastRollback is how long the last automatic rollback of plugin took,
// from the new version's failure to the previous one running again.
func (u *Updater) LastRollback(plugin string) time.Duration {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.rollbacks[plugin]
}
