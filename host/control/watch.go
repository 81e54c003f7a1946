package control

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/vigil-hids/vigil/api"
)

// watchMsg is one watch response, or the end of the watch stream.
type watchMsg struct {
	resp   *pb.WatchResponse
	closed bool
}

// watchSet is the host's watches on its desired-state keys: one gRPC watch
// stream of the host's own, one watch per key on it.
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
//
// The stream is etcd's Watch RPC itself, not clientv3's Watch: when a
// stream breaks (its member died or was cut off), clientv3 resumes every
// watch on another member from the revision it last saw, and for a key
// that did not change since the host registered that is a revision from
// hours ago. Each batch of 512 such watches makes the member read and
// decode the whole history since (etcd's syncWatchers, under the store's
// lock, which also holds back every new event): profiled, it was the
// largest item on the surviving members after a leader kill at 20,000
// hosts (16–24 % of their CPU), and it delayed the acknowledgements' delivery
// to the server by ~6 s. Here a broken stream ends the set instead, and the
// loop reads the few keys again and watches from the current revision.
type watchSet struct {
	events chan watchMsg
	rev    int64
	cancel context.CancelFunc
	wg     sync.WaitGroup

	stream pb.Watch_WatchClient
	sendMu sync.Mutex // Send is not safe for concurrent use

	// term is the highest raft term in a response header of the watches'
	// stream; termUp is signalled when it rises. A progress response
	// (requestProgress) carries the answering member's term, which is how
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

func (w *watchSet) send(req *pb.WatchRequest) error {
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	return w.stream.Send(req)
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

// openWatches opens the host's watch stream and creates one watch per key
// on it, within Config.RequestTimeout.
func (l *Loop) openWatches(ctx context.Context) (*watchSet, error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	ws := &watchSet{events: make(chan watchMsg, len(l.keys)), cancel: cancel, termUp: make(chan struct{}, 1)}
	type opened struct {
		early []*pb.WatchResponse
		err   error
	}
	done := make(chan opened, 1)
	go func() {
		early, err := ws.create(wctx, pb.NewWatchClient(l.cli.ActiveConnection()), l.keys)
		done <- opened{early, err}
	}()
	var o opened
	select {
	case o = <-done:
	case <-l.clockAfter(wctx, l.cfg.RequestTimeout):
		cancel()
		<-done
		o.err = fmt.Errorf("watching the desired state: no answer within %s", l.cfg.RequestTimeout)
	}
	if o.err != nil {
		ws.close()
		return nil, o.err
	}
	ws.wg.Add(1)
	go ws.receive(wctx, o.early)
	return ws, nil
}

// create opens the stream and creates a watch per key at the current
// revision. etcd answers a stream's creations in order; an event of a
// watch already created may come before a later creation's answer, and is
// returned to be delivered first.
func (w *watchSet) create(ctx context.Context, wc pb.WatchClient, keys []string) ([]*pb.WatchResponse, error) {
	// As clientv3 calls: wait for a member to connect to, and no receive
	// limit below etcd's own request limit (up to 64 MiB; gRPC's default
	// is 4 MiB, and a larger document would break the stream each time).
	stream, err := wc.Watch(ctx, grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(math.MaxInt32))
	if err != nil {
		return nil, fmt.Errorf("opening the watch stream: %w", err)
	}
	w.stream = stream
	for _, key := range keys {
		req := &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
			CreateRequest: &pb.WatchCreateRequest{Key: []byte(key)}}}
		if err := w.send(req); err != nil {
			return nil, fmt.Errorf("watching %s: %w", key, err)
		}
	}
	var early []*pb.WatchResponse
	for created := 0; created < len(keys); {
		resp, err := stream.Recv()
		if err != nil {
			return nil, fmt.Errorf("watching %s: %w", keys[created], err)
		}
		w.noteTerm(resp.Header.GetRaftTerm())
		switch {
		case resp.Created && resp.Canceled:
			return nil, fmt.Errorf("watching %s: refused: %s", keys[created], resp.CancelReason)
		case resp.Created:
			w.rev = max(w.rev, resp.Header.GetRevision())
			created++
		case len(resp.Events) > 0 || resp.Canceled || resp.CompactRevision != 0:
			early = append(early, resp)
		}
	}
	return early, nil
}

// receive delivers the stream's responses to events until the stream ends,
// then one closed message. Progress responses only update the term.
func (w *watchSet) receive(ctx context.Context, early []*pb.WatchResponse) {
	defer w.wg.Done()
	deliver := func(m watchMsg) bool {
		select {
		case w.events <- m:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for _, resp := range early {
		if !deliver(watchMsg{resp: resp}) {
			return
		}
	}
	for {
		resp, err := w.stream.Recv()
		if err != nil {
			deliver(watchMsg{closed: true})
			return
		}
		w.noteTerm(resp.Header.GetRaftTerm())
		if len(resp.Events) == 0 && !resp.Canceled && resp.CompactRevision == 0 {
			continue // a progress response (requestProgress)
		}
		if !deliver(watchMsg{resp: resp}) {
			return
		}
	}
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
			why = fmt.Errorf("%w: watch stream ended", errResync)
		case m.resp.CompactRevision != 0:
			why = fmt.Errorf("%w: revision compacted at %d", errResync, m.resp.CompactRevision)
		case m.resp.Canceled:
			why = fmt.Errorf("%w: watch cancelled: %s", errResync, m.resp.CancelReason)
		}
		if why != nil {
			if broken == nil { // the first reason is the cause
				broken = why
			}
			continue
		}
		for _, ev := range m.resp.Events {
			var value []byte
			if ev.Type != mvccpb.DELETE {
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
