package control

import (
	"context"
	"reflect"

	"github.com/vigil-hids/vigil/api"
)

// applyLayersLocked merges the layers and applies them. With force the
// applier is called even if the merge did not change (after a fresh read:
// level-triggered, and Apply is idempotent). Callers hold applyMu.
func (l *Loop) applyLayersLocked(ctx context.Context, rev int64, force bool) {
	l.mu.Lock()
	layers := make([]api.DesiredState, 0, len(l.keys))
	var errs []string
	for _, k := range l.keys {
		layers = append(layers, l.layers[k])
		if e := l.layerErrs[k]; e != "" {
			errs = append(errs, e)
		}
	}
	l.mu.Unlock()
	merged := api.Merge(layers...)
	l.applyLocked(ctx, rev, merged, force, false, errs...)
}

// applyLocked applies merged at rev (unless unchanged and not forced),
// records the acknowledgement, persists the state from etcd and schedules
// its tasks. Callers hold applyMu.
//
// The state is persisted even when the applier rejected part of it: the
// rest is in force, and a host that reboots while etcd is down must come
// back to what it was running, not to an older state (say, an emergency
// stop since lifted) because a later document also named something it
// refused. The rejected part is refused again on replay.
func (l *Loop) applyLocked(ctx context.Context, rev int64, merged api.DesiredState, force, fromDisk bool, layerErrs ...string) {
	persist := !fromDisk
	l.mu.Lock()
	changed := !l.hasMerged || !reflect.DeepEqual(l.merged, merged) || l.fromDisk != fromDisk
	prevErr := l.applied.Error
	l.mu.Unlock()

	applyErr := prevErr
	if changed || force {
		applyErr = ""
		if err := l.applier.Apply(ctx, rev, merged); err != nil {
			applyErr = err.Error()
		}
	}
	msg := applyErr
	for _, e := range layerErrs {
		if msg != "" {
			msg += "; "
		}
		msg += e
	}

	l.mu.Lock()
	l.merged, l.hasMerged, l.fromDisk = merged, true, fromDisk
	if rev > l.applied.Revision || changed || force || msg != l.applied.Error {
		l.applied = api.Applied{Revision: max(rev, l.applied.Revision), At: l.clock.Now().UTC(), Error: msg}
	}
	l.mu.Unlock()

	if persist && l.cfg.StateDir != "" && (changed || force) {
		p := persisted{Revision: rev, SavedAt: l.clock.Now().UTC(), State: merged}
		if err := saveDesired(l.cfg.StateDir, p); err != nil {
			l.log.Error("persisting desired state", "err", err)
		} else {
			l.mu.Lock()
			l.persisted = &p
			l.mu.Unlock()
		}
	}
	l.scheduleTasks(merged)
	l.markReady()
}
