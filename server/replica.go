package server

import (
	"context"
	"encoding/json"
	"hash/fnv"
	"math/rand/v2"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// replicaLoop keeps this replica registered under /hids/servers/{id} with
// a session lease and campaigns in the election; while leader it runs the
// singleton jobs. A lost session (etcd unreachable longer than the TTL) is
// replaced after a capped backoff.
func (s *Server) replicaLoop(ctx context.Context) {
	backoff := time.Second
	// Jitter seeded by the replica id, so replicas that lost etcd together
	// do not come back in step.
	h := fnv.New64a()
	_, _ = h.Write([]byte(s.cfg.ID))
	rng := rand.New(rand.NewPCG(h.Sum64(), 0))
	for ctx.Err() == nil {
		err := s.session(ctx)
		s.leader.Store(false)
		s.metrics.Leader.Set(0)
		s.metrics.ClearFleet()
		if ctx.Err() != nil {
			return
		}
		wait := backoff/2 + time.Duration(rng.Int64N(int64(backoff/2)+1))
		s.log.Warn("replica session ended; retrying", "error", errString(err), "backoff", wait.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func (s *Server) session(ctx context.Context) error {
	sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(int(s.cfg.LeaseTTL/time.Second)), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	defer func() {
		// Revoke the lease so the registration and candidacy vanish now,
		// not after the TTL.
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, _ = s.cli.Revoke(rctx, sess.Lease())
		cancel()
		_ = sess.Close()
	}()
	val, _ := json.Marshal(s.self())
	if _, err := s.cli.Put(ctx, s.ks.Servers()+s.cfg.ID, string(val), clientv3.WithLease(sess.Lease())); err != nil {
		return err
	}
	el := concurrency.NewElection(sess, s.ks.Election())
	campaign := make(chan error, 1)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { campaign <- el.Campaign(cctx, s.cfg.ID) }()
	select {
	case err := <-campaign:
		if err != nil {
			return err
		}
	case <-sess.Done():
		cancel()
		<-campaign
		return errSessionLost
	case <-ctx.Done():
		cancel()
		<-campaign
		return ctx.Err()
	}
	s.leader.Store(true)
	s.metrics.Leader.Set(1)
	s.log.Info("elected leader for singleton jobs")
	if s.cfg.CompactInterval > 0 {
		cctx, ccancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); s.compactor().run(cctx) }()
		defer func() { ccancel(); <-done }()
	}
	t := time.NewTicker(s.cfg.AggregateInterval)
	defer t.Stop()
	for {
		actx, acancel := context.WithTimeout(ctx, s.cfg.AggregateInterval)
		if err := s.metrics.Aggregate(actx, s.store, s.index, s.cfg.Now()); err != nil && ctx.Err() == nil {
			s.log.Warn("fleet aggregation failed", "error", err.Error())
		}
		acancel()
		select {
		case <-t.C:
		case <-sess.Done():
			return errSessionLost
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

type sessionError string

func (e sessionError) Error() string { return string(e) }

const errSessionLost = sessionError("server: replica lease lost")

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// healthLoop records etcd's health in /metrics on every replica.
func (s *Server) healthLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.AggregateInterval)
	defer t.Stop()
	for {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := s.store.Status(hctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		s.metrics.Health(st, err)
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}
