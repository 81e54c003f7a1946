package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
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
	lastAck   *api.Registration // the registration last written
}

// session follows the desired state and holds the registration until the
// lease or the registration is lost, or ctx ends. It opens the watches
// first and reads the state at the watches' start revision, applies it,
// and only then registers, so that the registration is one write that
// already acknowledges the state.
func (l *Loop) session(ctx context.Context) error {
	ws, err := l.openAndRead(ctx)
	if err != nil {
		return err
	}
	defer func() { ws.close() }()

	reg, err := l.registerHolding(ctx, ws)
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

	b := l.backoff("watch")
	ab := l.backoff("ack")
	// An acknowledgement is what an operator waits for: retry it at least
	// once per keepalive period even when etcd pushes back.
	ab.Max = min(ab.Max, l.cfg.LeaseTTL/3)
	for {
		err := l.follow(ctx, reg, ka, ws)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, errLeaseLost), errors.Is(err, errRegistrationLost):
			return err
		case !errors.Is(err, errResync):
			// The acknowledgement failed but the watches stand: keep
			// them and acknowledge again after a backoff.
			d := ab.Next()
			l.log.Warn("acknowledging desired state", "err", err, "retry_in", d)
			l.setError(err)
			l.mu.Lock()
			l.status.AckFailures++
			l.status.LastAckError = err.Error()
			l.mu.Unlock()
			if err := l.sleepWithLease(ctx, d, ka); err != nil {
				return err
			}
			continue
		}
		ab.Reset()
		ws.close()
		l.log.Info("re-reading desired state", "reason", err)
		l.mu.Lock()
		l.status.Resyncs++
		l.status.LastResync = err.Error()
		l.mu.Unlock()
		// Level-triggered: open new watches and read everything again,
		// keeping the lease alive while etcd is away.
		b.Reset()
		for {
			ws, err = l.openAndRead(ctx)
			if err == nil {
				break
			}
			d := b.Next()
			l.log.Warn("reading desired state", "err", err, "retry_in", d)
			l.setError(err)
			if err := l.sleepWithLease(ctx, d, ka); err != nil {
				ws = &watchSet{}
				return err
			}
		}
	}
}

// registerHolding registers, retrying with backoff while it keeps the
// watches open and applies what they deliver: a refused or failed attempt
// costs etcd two small writes, not a new set of watches and reads.
func (l *Loop) registerHolding(ctx context.Context, ws *watchSet) (*registration, error) {
	b := l.backoff("register")
	for {
		reg, err := l.register(ctx)
		if err == nil {
			return reg, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		l.setError(err)
		d := b.Next()
		l.log.Warn("registering", "err", err, "retry_in", d)
		if err := l.waitApplying(ctx, d, ws); err != nil {
			return nil, err
		}
	}
}

// waitApplying waits d while applying the watch events that arrive.
func (l *Loop) waitApplying(ctx context.Context, d time.Duration, ws *watchSet) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := l.clockAfter(wctx, d)
	for {
		select {
		case <-timer:
			return ctx.Err()
		case m := <-ws.events:
			if err := l.handleWatch(ctx, []watchMsg{m}); err != nil {
				return err
			}
		}
	}
}

// backoff returns a capped exponential backoff with full jitter (a delay
// anywhere between zero and the current step) drawn from a source seeded
// by the host name, so that hosts failing together retry spread out.
func (l *Loop) backoff(name string) *sdk.Backoff {
	b := sdk.NewBackoff(l.cfg.Host+"/"+name, l.cfg.BackoffInitial, l.cfg.BackoffMax)
	b.Clock = l.clock
	b.Jitter = 1
	return b
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

// lease returns a lease for a registration attempt: the one left by a
// failed attempt if it is young enough to still live, or a new one.
func (l *Loop) lease(ctx context.Context) (clientv3.LeaseID, error) {
	if l.spare != 0 && l.clock.Now().Sub(l.spareAt) < l.cfg.LeaseTTL/2 {
		id := l.spare
		l.spare = 0
		return id, nil
	}
	l.spare = 0
	ttl := int64((l.cfg.LeaseTTL + time.Second - 1) / time.Second)
	grant, err := l.cli.Grant(ctx, ttl)
	if err != nil {
		return 0, fmt.Errorf("granting lease: %w", err)
	}
	return grant.ID, nil
}

// keepSpare keeps a lease that failed to register for the next attempt,
// instead of revoking it (one write less for a loaded etcd).
func (l *Loop) keepSpare(id clientv3.LeaseID) {
	l.spare, l.spareAt = id, l.clock.Now()
}

// register creates the registration key only if it does not exist
// (CreateRevision == 0), with a lease. A key held by this same agent
// identity (a restart while the old lease lives) is reclaimed; one held by
// another agent is refused with ErrNameTaken naming the holder.
func (l *Loop) register(ctx context.Context) (*registration, error) {
	rctx, cancel := context.WithTimeout(ctx, l.cfg.RequestTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		lease, err := l.lease(rctx)
		if err != nil {
			return nil, err
		}
		reg, err := l.tryRegister(rctx, lease)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0 {
			continue // the spare lease had expired
		}
		if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			l.keepSpare(lease)
		}
		return reg, err
	}
}

func (l *Loop) tryRegister(ctx context.Context, lease clientv3.LeaseID) (*registration, error) {
	r := l.registrationValue()
	val, _ := json.Marshal(r)
	resp, err := l.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(l.key), "=", 0)).
		Then(clientv3.OpPut(l.key, string(val), clientv3.WithLease(lease))).
		Else(clientv3.OpGet(l.key)).
		Commit()
	if err != nil {
		return nil, fmt.Errorf("registering %s: %w", l.key, err)
	}
	if resp.Succeeded {
		return &registration{lease: lease, createRev: resp.Header.Revision, lastAck: r}, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, fmt.Errorf("registering %s: key vanished during the attempt", l.key)
	}
	kv := kvs[0]
	var holder api.Registration
	if json.Unmarshal(kv.Value, &holder) != nil || holder.Instance.ID != l.instance.ID {
		return nil, l.nameTaken(ctx, holder, kv.Lease)
	}
	// Our own key from an earlier run: take it over with the new lease.
	resp, err = l.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(l.key), "=", kv.ModRevision)).
		Then(clientv3.OpPut(l.key, string(val), clientv3.WithLease(lease))).
		Commit()
	if err != nil {
		return nil, fmt.Errorf("reclaiming %s: %w", l.key, err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("reclaiming %s: key changed during the attempt", l.key)
	}
	if kv.Lease != 0 && clientv3.LeaseID(kv.Lease) != lease {
		l.revokeQuietly(clientv3.LeaseID(kv.Lease))
	}
	l.log.Info("reclaimed registration of an earlier run", "previous_pid", holder.Instance.PID)
	return &registration{lease: lease, createRev: kv.CreateRevision, lastAck: r}, nil
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

// registrationValue returns the registration to write.
func (l *Loop) registrationValue() *api.Registration {
	status := l.applier.Status()
	var hostUpdate *api.UpdateStatus
	if h, ok := l.applier.(HostUpdateReporter); ok {
		hostUpdate = h.HostUpdate()
	}
	var keyring *api.KeyringStatus
	if k, ok := l.applier.(KeyringReporter); ok {
		keyring = k.Keyring()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	applied, stopped := l.applied, l.hasMerged && isStopped(l.merged)
	if l.held != nil {
		applied, stopped = l.held.applied, l.held.stopped
	}
	return &api.Registration{
		Host:       l.cfg.Host,
		Version:    l.cfg.Version,
		OS:         runtime.GOOS,
		Arch:       runtime.GOARCH,
		Labels:     l.cfg.Labels,
		StartedAt:  l.startedAt.UTC(),
		UpdatedAt:  l.clock.Now().UTC(),
		Applied:    applied,
		Stopped:    stopped,
		Plugins:    status,
		Instance:   l.instance,
		Tasks:      append([]api.TaskResult(nil), l.results...),
		HostUpdate: hostUpdate,
		Keyring:    keyring,
	}
}

// HostUpdateReporter is implemented by an Applier that updates vigil-host
// itself; its status goes into the registration value (HostUpdate).
type HostUpdateReporter interface {
	HostUpdate() *api.UpdateStatus
}

// KeyringReporter is implemented by an Applier whose host verifies
// releases with a root-signed keyring; its state goes into the
// registration value (Keyring).
type KeyringReporter interface {
	Keyring() *api.KeyringStatus
}

// sameReport reports whether two registrations say the same thing (all
// but UpdatedAt; the rest of the value never changes within a run).
func sameReport(a, b *api.Registration) bool {
	if a == nil || b == nil {
		return false
	}
	return a.Applied == b.Applied && a.Stopped == b.Stopped && a.OS == b.OS && a.Arch == b.Arch &&
		slices.Equal(a.Tasks, b.Tasks) && maps.Equal(a.Plugins, b.Plugins) &&
		(a.HostUpdate == nil) == (b.HostUpdate == nil) && (a.HostUpdate == nil || *a.HostUpdate == *b.HostUpdate) &&
		(a.Keyring == nil) == (b.Keyring == nil) && (a.Keyring == nil || *a.Keyring == *b.Keyring)
}

// ack writes the registration if it changed since the last write, only if
// the key is still the one this session created, with the lease.
//
// A write sent through a follower to a leader that dies is lost without an
// answer: etcd fails it only after its request timeout (5 s + 2 × election
// timeout). So, with LeaderProbe set (off by default, see Config), while
// the write is pending longer than LeaderProbe, the
// loop asks its watch stream's member for progress every LeaderProbe (a
// stream message: no raft, no disk), whose answer carries the member's
// raft term; a term higher than the one the write was sent under means an
// election: the write is cancelled and sent again at once (a duplicate is
// harmless: same value, same guard), at most once per acknowledgement. A
// write that is merely slow keeps waiting; but a cell so overloaded that
// it holds elections gets every pending write twice (hence off by
// default).
func (l *Loop) ack(ctx context.Context, reg *registration, ws *watchSet) error {
	r := l.registrationValue()
	if sameReport(r, reg.lastAck) {
		return nil
	}
	val, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("acknowledging: %w", err)
	}
	probe := ws
	for {
		resp, err := l.ackOnce(ctx, reg, string(val), probe)
		switch {
		case errors.Is(err, errLeaderChanged):
			l.mu.Lock()
			l.status.AckResends++
			l.mu.Unlock()
			l.log.Info("leader changed while acknowledging; sending again")
			probe = nil // once
			continue
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return errLeaseLost
		case err != nil:
			return fmt.Errorf("acknowledging: %w", err)
		case !resp.Succeeded:
			return errRegistrationLost
		}
		reg.lastAck = r
		return nil
	}
}

var errLeaderChanged = errors.New("control: raft term rose while the write was pending")

// ackOnce sends the guarded write once; with ws, it probes for an election
// while the write is pending (see ack).
func (l *Loop) ackOnce(ctx context.Context, reg *registration, val string, ws *watchSet) (*clientv3.TxnResponse, error) {
	rctx, cancel := context.WithTimeout(ctx, l.cfg.RequestTimeout)
	defer cancel()
	txn := func() (*clientv3.TxnResponse, error) {
		return l.cli.Txn(rctx).
			If(clientv3.Compare(clientv3.CreateRevision(l.key), "=", reg.createRev)).
			Then(clientv3.OpPut(l.key, val, clientv3.WithLease(reg.lease))).
			Commit()
	}
	if ws == nil || ws.stream == nil || l.cfg.LeaderProbe <= 0 || l.cfg.LeaderProbe >= l.cfg.RequestTimeout {
		return txn()
	}
	sent := ws.term.Load()
	type result struct {
		resp *clientv3.TxnResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := txn()
		done <- result{resp, err}
	}()
	probe := l.clockAfter(rctx, l.cfg.LeaderProbe)
	for {
		select {
		case res := <-done:
			if res.err == nil {
				ws.noteTerm(res.resp.Header.RaftTerm)
			}
			return res.resp, res.err
		case <-probe:
			l.requestProgress(rctx, ws)
			probe = l.clockAfter(rctx, l.cfg.LeaderProbe)
		case <-ws.termUp:
			if sent != 0 && ws.term.Load() > sent {
				cancel()
				<-done
				return nil, errLeaderChanged
			}
		}
	}
}

// requestProgress asks the member of the watch stream for a progress
// response, without blocking the caller (a Send may wait for the stream's
// flow control), until ctx ends. Best effort: a request lost (stream
// breaking) leaves the write to its timeout, as without the probe.
func (l *Loop) requestProgress(ctx context.Context, ws *watchSet) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		if ctx.Err() == nil {
			_ = ws.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{
				ProgressRequest: &pb.WatchProgressRequest{}}})
		}
	}()
}
