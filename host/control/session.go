package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/sdk"
)

// registration is what a session holds: its lease and the create revision
// of its key (so that it never overwrites a key someone else created).
type registration struct {
	lease     clientv3.LeaseID
	createRev int64
	lastAck   []byte // the registration last written, without UpdatedAt
}

// session registers the host, keeps the lease alive and follows the
// desired state until the lease or the registration is lost, or ctx ends.
func (l *Loop) session(ctx context.Context) error {
	reg, err := l.register(ctx)
	if err != nil {
		return err
	}
	l.setConnected(reg.lease)
	l.log.Info("registered", "lease", fmt.Sprintf("%x", int64(reg.lease)))

	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	ka, err := l.cli.KeepAlive(kctx, reg.lease)
	if err != nil {
		return fmt.Errorf("keeping lease alive: %w", err)
	}

	b := sdk.NewBackoff(l.cfg.Host+"/watch", l.cfg.BackoffInitial, l.cfg.BackoffMax)
	b.Clock = l.clock
	for {
		progressed, err := l.follow(ctx, reg, ka)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, errLeaseLost), errors.Is(err, errRegistrationLost):
			return err
		}
		if progressed {
			b.Reset()
			if errors.Is(err, errResync) {
				l.log.Info("re-reading desired state", "reason", err)
				continue
			}
		}
		d := b.Next()
		l.log.Warn("following desired state", "err", err, "retry_in", d)
		l.setError(err)
		// Keep the lease alive while waiting.
		if err := l.sleepWithLease(ctx, d, ka); err != nil {
			return err
		}
	}
}

// sleepWithLease waits d while draining the keepalive channel.
func (l *Loop) sleepWithLease(ctx context.Context, d time.Duration, ka <-chan *clientv3.LeaseKeepAliveResponse) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	slept := make(chan error, 1)
	go func() { slept <- l.clock.Sleep(sctx, d) }()
	for {
		select {
		case err := <-slept:
			return err
		case _, ok := <-ka:
			if !ok {
				cancel()
				<-slept
				return errLeaseLost
			}
		}
	}
}

// register grants a lease and creates the registration key only if it does
// not exist (CreateRevision == 0). A key held by this same agent identity
// (a restart while the old lease lives) is reclaimed; one held by another
// agent is refused with ErrNameTaken naming the holder.
func (l *Loop) register(ctx context.Context) (*registration, error) {
	rctx, cancel := context.WithTimeout(ctx, l.cfg.RequestTimeout)
	defer cancel()
	ttl := int64((l.cfg.LeaseTTL + time.Second - 1) / time.Second)
	grant, err := l.cli.Grant(rctx, ttl)
	if err != nil {
		return nil, fmt.Errorf("granting lease: %w", err)
	}
	reg := &registration{lease: grant.ID}
	val, bare := l.registrationValue()
	resp, err := l.cli.Txn(rctx).
		If(clientv3.Compare(clientv3.CreateRevision(l.key), "=", 0)).
		Then(clientv3.OpPut(l.key, string(val), clientv3.WithLease(grant.ID))).
		Else(clientv3.OpGet(l.key)).
		Commit()
	if err != nil {
		l.revokeQuietly(grant.ID)
		return nil, fmt.Errorf("registering %s: %w", l.key, err)
	}
	if resp.Succeeded {
		reg.createRev = resp.Header.Revision
		reg.lastAck = bare
		return reg, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		l.revokeQuietly(grant.ID)
		return nil, fmt.Errorf("registering %s: key vanished during the attempt", l.key)
	}
	kv := kvs[0]
	var holder api.Registration
	if json.Unmarshal(kv.Value, &holder) != nil || holder.Instance.ID != l.instance.ID {
		l.revokeQuietly(grant.ID)
		return nil, l.nameTaken(rctx, holder, kv.Lease)
	}
	// Our own key from an earlier run: take it over with the new lease.
	resp, err = l.cli.Txn(rctx).
		If(clientv3.Compare(clientv3.ModRevision(l.key), "=", kv.ModRevision)).
		Then(clientv3.OpPut(l.key, string(val), clientv3.WithLease(grant.ID))).
		Commit()
	if err != nil || !resp.Succeeded {
		l.revokeQuietly(grant.ID)
		if err == nil {
			err = errors.New("key changed during the attempt")
		}
		return nil, fmt.Errorf("reclaiming %s: %w", l.key, err)
	}
	if kv.Lease != 0 && clientv3.LeaseID(kv.Lease) != grant.ID {
		l.revokeQuietly(clientv3.LeaseID(kv.Lease))
	}
	l.log.Info("reclaimed registration of an earlier run", "previous_pid", holder.Instance.PID)
	reg.createRev = kv.CreateRevision
	reg.lastAck = bare
	return reg, nil
}

func (l *Loop) nameTaken(ctx context.Context, holder api.Registration, lease int64) error {
	who := "an agent whose value is not a registration"
	if holder.Instance.ID != "" {
		who = fmt.Sprintf("%s, started %s", holder.Instance, holder.StartedAt.UTC().Format(time.RFC3339))
	}
	expiry := ""
	if lease != 0 {
		if ttl, err := l.cli.TimeToLive(ctx, clientv3.LeaseID(lease)); err == nil && ttl.TTL > 0 {
			expiry = fmt.Sprintf("; its lease expires in %ds unless renewed", ttl.TTL)
		}
	}
	return fmt.Errorf("%w: %s is held by %s%s", ErrNameTaken, l.key, who, expiry)
}

func (l *Loop) revokeQuietly(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(l.ctx), l.cfg.RequestTimeout)
	defer cancel()
	_, _ = l.cli.Revoke(ctx, id)
}

// registrationValue returns the registration to write and the same without
// UpdatedAt (to tell whether anything changed).
func (l *Loop) registrationValue() (val, bare []byte) {
	status := l.applier.Status()
	l.mu.Lock()
	r := api.Registration{
		Host:      l.cfg.Host,
		Version:   l.cfg.Version,
		Labels:    l.cfg.Labels,
		StartedAt: l.startedAt.UTC(),
		Applied:   l.applied,
		Stopped:   l.hasMerged && isStopped(l.merged),
		Plugins:   status,
		Instance:  l.instance,
		Tasks:     append([]api.TaskResult(nil), l.results...),
	}
	l.mu.Unlock()
	bare, _ = json.Marshal(r)
	r.UpdatedAt = l.clock.Now().UTC()
	val, _ = json.Marshal(r)
	return val, bare
}

// ack writes the registration if it changed since the last write, only if
// the key is still the one this session created, with the lease.
func (l *Loop) ack(ctx context.Context, reg *registration) error {
	val, bare := l.registrationValue()
	if bytes.Equal(bare, reg.lastAck) {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, l.cfg.RequestTimeout)
	defer cancel()
	resp, err := l.cli.Txn(rctx).
		If(clientv3.Compare(clientv3.CreateRevision(l.key), "=", reg.createRev)).
		Then(clientv3.OpPut(l.key, string(val), clientv3.WithLease(reg.lease))).
		Commit()
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return errLeaseLost
	case err != nil:
		return fmt.Errorf("acknowledging: %w", err)
	case !resp.Succeeded:
		return errRegistrationLost
	}
	reg.lastAck = bare
	return nil
}

// watchMsg is one watch response, or the end of a watch channel.
type watchMsg struct {
	resp   clientv3.WatchResponse
	closed bool
}

// follow reads the desired state at one revision, applies and acknowledges
// it, then watches every desired-state key from the next revision until
// something breaks. progressed reports whether the read succeeded.
//
// Each host watches its own keys only (fleet, one per group, its host key),
// so the etcd server fans a fleet-wide change out to N watchers and a
// host's change to one; a single watch on the whole config prefix would
// send every host every other host's changes.
func (l *Loop) follow(ctx context.Context, reg *registration, ka <-chan *clientv3.LeaseKeepAliveResponse) (progressed bool, err error) {
	rev, err := l.readAll(ctx)
	if err != nil {
		return false, err
	}
	if err := l.ack(ctx, reg); err != nil {
		return true, err
	}

	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer wcancel()
	events := make(chan watchMsg, len(l.keys))
	for _, key := range l.keys {
		wch := l.cli.Watch(wctx, key, clientv3.WithRev(rev+1))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for resp := range wch {
				select {
				case events <- watchMsg{resp: resp}:
				case <-wctx.Done():
					return
				}
			}
			select {
			case events <- watchMsg{closed: true}:
			case <-wctx.Done():
			}
		}()
	}

	statusTick := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for l.clock.Sleep(wctx, l.cfg.StatusInterval) == nil {
			select {
			case statusTick <- struct{}{}:
			case <-wctx.Done():
				return
			}
		}
	}()

	for {
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case _, ok := <-ka:
			if !ok {
				return true, errLeaseLost
			}
		case m := <-events:
			batch := []watchMsg{m}
		drain:
			for len(batch) < 256 {
				select {
				case m := <-events:
					batch = append(batch, m)
				default:
					break drain
				}
			}
			if err := l.handleWatch(ctx, batch); err != nil {
				return true, err
			}
			if err := l.ack(ctx, reg); err != nil {
				return true, err
			}
		case <-l.kick:
			if err := l.ack(ctx, reg); err != nil {
				return true, err
			}
		case <-statusTick:
			if err := l.ack(ctx, reg); err != nil {
				return true, err
			}
		}
	}
}

// handleWatch folds a batch of watch responses into the layers and applies
// the result once. A closed, cancelled or compacted watch ends the watch
// (errResync) after applying what arrived before it.
func (l *Loop) handleWatch(ctx context.Context, batch []watchMsg) error {
	var maxRev int64
	var broken error
	changed := false
	for _, m := range batch {
		switch {
		case m.closed:
			broken = fmt.Errorf("%w: watch channel closed", errResync)
			continue
		case m.resp.CompactRevision != 0:
			broken = fmt.Errorf("%w: revision compacted at %d", errResync, m.resp.CompactRevision)
			continue
		case m.resp.Canceled || m.resp.Err() != nil:
			broken = fmt.Errorf("%w: %v", errResync, m.resp.Err())
			continue
		}
		for _, ev := range m.resp.Events {
			key := string(ev.Kv.Key)
			if ev.Type == clientv3.EventTypeDelete {
				l.setLayer(key, nil, ev.Kv.ModRevision)
			} else {
				l.setLayer(key, ev.Kv.Value, ev.Kv.ModRevision)
			}
			maxRev = max(maxRev, ev.Kv.ModRevision)
			changed = true
		}
	}
	if changed {
		l.applyMu.Lock()
		l.applyLayersLocked(ctx, maxRev, false)
		l.applyMu.Unlock()
	}
	return broken
}

// readAll reads every desired-state key in one Txn (one revision), applies
// the merge and returns the revision read.
func (l *Loop) readAll(ctx context.Context) (int64, error) {
	rctx, cancel := context.WithTimeout(ctx, l.cfg.RequestTimeout)
	defer cancel()
	ops := make([]clientv3.Op, len(l.keys))
	for i, k := range l.keys {
		ops[i] = clientv3.OpGet(k)
	}
	resp, err := l.cli.Txn(rctx).Then(ops...).Commit()
	if err != nil {
		return 0, fmt.Errorf("reading desired state: %w", err)
	}
	for i, k := range l.keys {
		kvs := resp.Responses[i].GetResponseRange().Kvs
		if len(kvs) == 0 {
			l.setLayer(k, nil, 0)
			continue
		}
		l.setLayer(k, kvs[0].Value, kvs[0].ModRevision)
	}
	rev := resp.Header.Revision
	l.applyMu.Lock()
	l.applyLayersLocked(ctx, rev, true)
	l.applyMu.Unlock()
	return rev, nil
}

// setLayer decodes one scope's document. A document that does not decode
// keeps the scope's last good layer and records why.
func (l *Loop) setLayer(key string, value []byte, rev int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(value) == 0 {
		delete(l.layers, key)
		delete(l.layerErrs, key)
		return
	}
	var doc api.Document
	if err := json.Unmarshal(value, &doc); err != nil {
		l.layerErrs[key] = fmt.Sprintf("%s at revision %d: not a desired-state document (%v); keeping the last good one", key, rev, err)
		return
	}
	delete(l.layerErrs, key)
	l.layers[key] = doc.State
}

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
// records the acknowledgement, persists a state from etcd that the applier
// fully accepted and schedules its tasks. Callers hold applyMu.
func (l *Loop) applyLocked(ctx context.Context, rev int64, merged api.DesiredState, force, fromDisk bool, layerErrs ...string) {
	persist := !fromDisk && len(layerErrs) == 0
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

	if persist && applyErr == "" && l.cfg.StateDir != "" && (changed || force) {
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
