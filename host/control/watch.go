package control

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/vigil-hids/vigil/api"
)

// watchMsg is one watch response, or the end of a watch channel.
type watchMsg struct {
	resp   clientv3.WatchResponse
	closed bool
}

// watchSet is the host's watches on its desired-state keys, fanned in to
// one channel.
//
// Each host watches its own keys only (fleet, one per group, its host key),
// so the etcd server fans a fleet-wide change out to N watchers and a
// host's change to one; a single watch on the whole config prefix would
// send every host every other host's changes.
//
// The watches are created at the current revision (no start revision) and
// the state is then read at the revision the server reported when creating
// them: a watch created with an older start revision is "unsynced" in etcd
// and has to be caught up by a scan of the history, which is what makes a
// reconnect storm of thousands of hosts expensive. Events at or below a
// layer's known revision are dropped, so the overlap between the read and
// the watches cannot apply an older value.
type watchSet struct {
	events chan watchMsg
	rev    int64
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// ctx is the watches' context: RequestProgress must name the same
	// gRPC stream (its outgoing metadata).
	ctx context.Context
	// term is the highest raft term in a response header of the watches'
	// stream; termUp is signalled when it rises. A progress response
	// (RequestProgress) carries the answering member's term, which is how
	// a pending acknowledgement learns that the cell elected a new leader.
	term   atomic.Uint64
	termUp chan struct{}
}

// noteTerm records a response header's raft term.
func (w *watchSet) noteTerm(t uint64) {
	for {
		cur := w.term.Load()
		if t <= cur {
			return
		}
		if w.term.CompareAndSwap(cur, t) {
			select {
			case w.termUp <- struct{}{}:
			default:
			}
			return
		}
	}
}

// close cancels the watches and waits for their goroutines. It is safe on
// a nil or empty set and idempotent.
func (w *watchSet) close() {
	if w == nil || w.cancel == nil {
		return
	}
	w.cancel()
	w.wg.Wait()
}

// openAndRead opens the watches and reads and applies the desired state at
// their start revision.
func (l *Loop) openAndRead(ctx context.Context) (*watchSet, error) {
	ws, err := l.openWatches(ctx)
	if err != nil {
		return nil, err
	}
	if err := l.readAt(ctx, ws.rev); err != nil {
		ws.close()
		return nil, err
	}
	return ws, nil
}

func (l *Loop) openWatches(ctx context.Context) (*watchSet, error) {
	// The host name in the metadata gives this host's watches a gRPC
	// stream of their own even when the client is shared (vigil-sim), as
	// on a real host: watch creations on one stream are serialised.
	wctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(
		clientv3.WithRequireLeader(ctx), "vigil-host", l.cfg.Host))
	ws := &watchSet{events: make(chan watchMsg, len(l.keys)), cancel: cancel, ctx: wctx, termUp: make(chan struct{}, 1)}
	chans := make([]clientv3.WatchChan, len(l.keys))
	for i, key := range l.keys {
		chans[i] = l.cli.Watch(wctx, key, clientv3.WithCreatedNotify())
	}
	timeout := l.clockAfter(wctx, l.cfg.RequestTimeout)
	for i, wch := range chans {
		select {
		case resp, ok := <-wch:
			if !ok || !resp.Created || resp.Err() != nil {
				ws.close()
				return nil, fmt.Errorf("watching %s: %v", l.keys[i], resp.Err())
			}
			ws.rev = max(ws.rev, resp.Header.Revision)
			ws.noteTerm(resp.Header.RaftTerm)
		case <-timeout:
			ws.close()
			return nil, fmt.Errorf("watching %s: no answer within %s", l.keys[i], l.cfg.RequestTimeout)
		}
	}
	for _, wch := range chans {
		ws.wg.Add(1)
		go func() {
			defer ws.wg.Done()
			for resp := range wch {
				ws.noteTerm(resp.Header.RaftTerm)
				if resp.IsProgressNotify() {
					continue // only asked for its term (ackOnce)
				}
				select {
				case ws.events <- watchMsg{resp: resp}:
				case <-wctx.Done():
					return
				}
			}
			select {
			case ws.events <- watchMsg{closed: true}:
			case <-wctx.Done():
			}
		}()
	}
	return ws, nil
}

// clockAfter returns a channel closed after d on the loop's clock, or when
// ctx (always derived from the loop's context) ends. Close waits for its
// goroutine.
func (l *Loop) clockAfter(ctx context.Context, d time.Duration) <-chan struct{} {
	c := make(chan struct{})
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		_ = l.clock.Sleep(ctx, d)
		close(c)
	}()
	return c
}

// follow acknowledges the state read, then applies and acknowledges watch
// events until something breaks: the lease or the registration is lost, or
// a watch ends (compaction, lost leader, closed channel).
func (l *Loop) follow(ctx context.Context, reg *registration, ka <-chan *clientv3.LeaseKeepAliveResponse, ws *watchSet) error {
	if err := l.ack(ctx, reg, ws); err != nil {
		return err
	}
	sctx, scancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer scancel()
	statusTick := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for l.clock.Sleep(sctx, l.cfg.StatusInterval) == nil {
			select {
			case statusTick <- struct{}{}:
			case <-sctx.Done():
				return
			}
		}
	}()

	var ackDue <-chan struct{}
	defer l.releaseReport()
	// Level-triggered to the end: read everything again now and then, so
	// that a watch stream that hangs without an error cannot keep a host
	// behind for longer than ResyncInterval (plus this host's spread).
	resyncDue := l.clockAfter(sctx, l.cfg.ResyncInterval+SpreadDelay(l.cfg.Host, "resync", l.cfg.ResyncInterval/2))
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-resyncDue:
			return fmt.Errorf("%w: periodic re-read every %s", errResync, l.cfg.ResyncInterval)
		case _, ok := <-ka:
			if !ok {
				return errLeaseLost
			}
		case m := <-ws.events:
			batch := []watchMsg{m}
		drain:
			for len(batch) < 256 {
				select {
				case m := <-ws.events:
					batch = append(batch, m)
				default:
					break drain
				}
			}
			shared := l.cfg.AckSpread > 0 && l.sharedChange(batch)
			if shared && ackDue == nil {
				l.holdReport()
			}
			broken := l.handleWatch(ctx, batch)
			if shared && broken == nil {
				// Applied at once; the acknowledgement of a change every
				// host got waits for this host's moment of AckSpread.
				if ackDue == nil {
					ackDue = l.clockAfter(sctx, SpreadDelay(l.cfg.Host, "ack", l.cfg.AckSpread))
				}
				continue
			}
			// A change for this host alone is acknowledged at once, and
			// with it anything held.
			ackDue = nil
			l.releaseReport()
			if err := l.ack(ctx, reg, ws); err != nil {
				return err
			}
			if broken != nil {
				return broken
			}
		case <-ackDue:
			ackDue = nil
			l.releaseReport()
			if err := l.ack(ctx, reg, ws); err != nil {
				return err
			}
		case <-l.kick:
			if err := l.ack(ctx, reg, ws); err != nil {
				return err
			}
		case <-statusTick:
			if err := l.ack(ctx, reg, ws); err != nil {
				return err
			}
		}
	}
}

// handleWatch folds a batch of watch responses into the layers and applies
// the result once. A closed, cancelled or compacted watch is returned as
// errResync after what arrived before it is applied.
func (l *Loop) handleWatch(ctx context.Context, batch []watchMsg) error {
	var maxRev int64
	var broken error
	changed := false
	for _, m := range batch {
		var why error
		switch {
		case m.closed:
			why = fmt.Errorf("%w: watch channel closed", errResync)
		case m.resp.CompactRevision != 0:
			why = fmt.Errorf("%w: revision compacted at %d", errResync, m.resp.CompactRevision)
		case m.resp.Canceled || m.resp.Err() != nil:
			why = fmt.Errorf("%w: %v", errResync, m.resp.Err())
		}
		if why != nil {
			if broken == nil { // the first reason is the cause
				broken = why
			}
			continue
		}
		for _, ev := range m.resp.Events {
			var value []byte
			if ev.Type != clientv3.EventTypeDelete {
				value = ev.Kv.Value
			}
			if l.setLayer(string(ev.Kv.Key), value, ev.Kv.ModRevision, false) {
				maxRev = max(maxRev, ev.Kv.ModRevision)
				changed = true
			}
		}
	}
	if changed {
		l.applyMu.Lock()
		l.applyLayersLocked(ctx, maxRev, false)
		l.applyMu.Unlock()
	}
	return broken
}

// readAt reads every desired-state key at revision rev in one Txn, and
// applies the merge.
func (l *Loop) readAt(ctx context.Context, rev int64) error {
	rctx, cancel := context.WithTimeout(ctx, l.cfg.RequestTimeout)
	defer cancel()
	ops := make([]clientv3.Op, len(l.keys))
	for i, k := range l.keys {
		// Serializable: the member reported rev, so it has applied it,
		// and no round trip to the leader is needed (a member that has
		// not, answers ErrFutureRev and the read is retried).
		ops[i] = clientv3.OpGet(k, clientv3.WithRev(rev), clientv3.WithSerializable())
	}
	resp, err := l.cli.Txn(rctx).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("reading desired state at revision %d: %w", rev, err)
	}
	for i, k := range l.keys {
		var value []byte
		if kvs := resp.Responses[i].GetResponseRange().Kvs; len(kvs) > 0 {
			value = kvs[0].Value
		}
		l.setLayer(k, value, rev, true)
	}
	l.applyMu.Lock()
	l.applyLayersLocked(ctx, rev, true)
	l.applyMu.Unlock()
	return nil
}

// setLayer records one scope's document as of rev. Unless force (a read of
// the whole state), a value at or below the layer's known revision is a
// repeat and is dropped. A document that does not decode keeps the scope's
// last good layer and records why. It reports whether the layer was
// considered.
func (l *Loop) setLayer(key string, value []byte, rev int64, force bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !force && rev <= l.layerRev[key] {
		return false
	}
	l.layerRev[key] = rev
	if len(value) == 0 {
		delete(l.layers, key)
		delete(l.layerErrs, key)
		return true
	}
	var doc api.Document
	err := json.Unmarshal(value, &doc)
	if err == nil {
		delete(l.layerErrs, key)
		l.layers[key] = doc.State
		return true
	}
	l.layerErrs[key] = fmt.Sprintf("%s at revision %d: not a desired-state document (%v); keeping the last good one", key, rev, err)
	return true
}

// sharedChange reports whether a batch changed a key other hosts watch too
// (the fleet or a group key): its acknowledgements arrive from every host
// at once.
func (l *Loop) sharedChange(batch []watchMsg) bool {
	own := l.keys[len(l.keys)-1]
	for _, m := range batch {
		for _, ev := range m.resp.Events {
			if string(ev.Kv.Key) != own {
				return true
			}
		}
	}
	return false
}

// holdReport freezes what the registration reports as applied (and
// stopped) until releaseReport, while an acknowledgement waits for its
// moment of AckSpread.
func (l *Loop) holdReport() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = &heldReport{applied: l.applied, stopped: l.hasMerged && isStopped(l.merged)}
	}
}

func (l *Loop) releaseReport() {
	l.mu.Lock()
	l.held = nil
	l.mu.Unlock()
}
