package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/jsondiff"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// History returns a scope's history records, newest first, at most limit
// (zero means all). Records are ordinary keys written in the same Txn as
// each change, so they survive compaction of etcd's revisions.
func (s *Store) History(ctx context.Context, scope api.Scope, limit int64) ([]api.Document, error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}
	if limit > 0 {
		opts = append(opts, clientv3.WithLimit(limit))
	}
	resp, err := s.cli.Get(ctx, s.opts.Keyspace.History(scope), opts...)
	if err != nil {
		return nil, fmt.Errorf("reading history of %s: %w", scope, err)
	}
	out := make([]api.Document, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var d api.Document
		if err := json.Unmarshal(kv.Value, &d); err != nil {
			return nil, fmt.Errorf("decoding %s: %w", kv.Key, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// At returns the history record seq of a scope.
func (s *Store) At(ctx context.Context, scope api.Scope, seq int64) (api.Document, error) {
	key := s.opts.Keyspace.HistoryEntry(scope, seq)
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return api.Document{}, fmt.Errorf("reading %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return api.Document{}, fmt.Errorf("%w: %s has no history record %d", ErrNotFound, scope, seq)
	}
	var d api.Document
	if err := json.Unmarshal(resp.Kvs[0].Value, &d); err != nil {
		return api.Document{}, fmt.Errorf("decoding %s: %w", key, err)
	}
	return d, nil
}

// Rollback writes the state of history record seq as a new document (a new
// seq; history is append-only). The old state is validated again: a
// rollback to a config the current plugins refuse is refused.
func (s *Store) Rollback(ctx context.Context, scope api.Scope, seq int64, author, comment string) (Result, error) {
	old, err := s.At(ctx, scope, seq)
	if err != nil {
		return Result{}, err
	}
	if comment == "" {
		comment = fmt.Sprintf("rollback to seq %d", seq)
	} else {
		comment = fmt.Sprintf("rollback to seq %d: %s", seq, comment)
	}
	return s.Set(ctx, Write{Scope: scope, State: old.State, Author: author, Comment: comment})
}

// Diff compares the states of two history records of a scope; to == 0
// means the current document.
func (s *Store) Diff(ctx context.Context, scope api.Scope, from, to int64) ([]jsondiff.Change, error) {
	a, err := s.At(ctx, scope, from)
	if err != nil {
		return nil, err
	}
	var b api.Document
	if to == 0 {
		cur, err := s.Get(ctx, scope)
		if err != nil {
			return nil, err
		}
		b = cur.Document
	} else if b, err = s.At(ctx, scope, to); err != nil {
		return nil, err
	}
	return jsondiff.Diff(a.State, b.State)
}
