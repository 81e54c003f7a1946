// Package store is the server's access to etcd: desired-state documents per
// scope, each change written in one Txn together with its history record
// and guarded by the scope key's mod revision; host registrations read in
// pages for listing, counting and acknowledgement progress; and the
// cluster's status.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/desired"
	"github.com/vigil-hids/vigil/server/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Errors callers compare with errors.Is.
var (
	// ErrConflict means another writer changed the scope since it was
	// read; nothing was written. Read again and retry.
	ErrConflict = errors.New("store: conflicting write")
	// ErrNotFound means no such document or history record.
	ErrNotFound = errors.New("store: not found")
)

// Options configures a Store.
type Options struct {
	Keyspace api.Keyspace
	// Validate checks each plugin's config (plugins/catalog.Validate).
	Validate desired.PluginValidator
	// MaxRequestBytes is etcd's request limit; zero means etcd's default.
	MaxRequestBytes int
	// Now is the clock stamped into documents; nil means time.Now.
	Now func() time.Time
	// PageSize is how many registrations one range read returns; zero
	// means 1000.
	PageSize int64
	// OnWrite, if set, is called after every desired-state write attempt
	// with the scope kind and the result ("ok", "conflict", "invalid",
	// "error"); the server counts them in /metrics.
	OnWrite func(kind api.ScopeKind, result string)
	// Index, if set, answers counts and progress from memory while it is
	// synced; otherwise they read etcd.
	Index *registry.Index
}

// Store reads and writes Vigil's keyspace.
type Store struct {
	cli  *clientv3.Client
	opts Options
}

// New returns a Store over cli.
func New(cli *clientv3.Client, opts Options) *Store {
	if opts.Keyspace.Prefix == "" {
		opts.Keyspace = api.NewKeyspace("")
	}
	if opts.MaxRequestBytes == 0 {
		opts.MaxRequestBytes = desired.DefaultMaxRequestBytes
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.PageSize == 0 {
		opts.PageSize = 1000
	}
	return &Store{cli: cli, opts: opts}
}

// Client is the etcd client.
func (s *Store) Client() *clientv3.Client { return s.cli }

// Keyspace is the store's keyspace.
func (s *Store) Keyspace() api.Keyspace { return s.opts.Keyspace }

// Current is a scope's document as stored.
type Current struct {
	Document api.Document `json:"document"`
	// Revision is the etcd mod revision of the scope key; 0 if the scope
	// has no document yet.
	Revision int64 `json:"revision"`
}

// Get reads a scope's document. A scope never written returns an empty
// document with Seq 0 and Revision 0, not an error.
func (s *Store) Get(ctx context.Context, scope api.Scope) (Current, error) {
	resp, err := s.cli.Get(ctx, s.opts.Keyspace.ScopeKey(scope))
	if err != nil {
		return Current{}, fmt.Errorf("reading %s: %w", scope, err)
	}
	if len(resp.Kvs) == 0 {
		return Current{Document: api.Document{Scope: scope.String()}}, nil
	}
	var c Current
	if err := json.Unmarshal(resp.Kvs[0].Value, &c.Document); err != nil {
		return Current{}, fmt.Errorf("decoding %s: %w", resp.Kvs[0].Key, err)
	}
	c.Revision = resp.Kvs[0].ModRevision
	return c, nil
}

// Write is one change to a scope.
type Write struct {
	Scope   api.Scope
	State   api.DesiredState
	Author  string
	Comment string
	// IfRevision, if set, is the scope key's mod revision the change was
	// made against (Current.Revision from Get, 0 for a scope never
	// written): the write fails with ErrConflict if the key changed since.
	// Unset means "what is stored now", read just before the Txn, which
	// still guards against a writer racing that read.
	IfRevision *int64
	// SkipPluginCheck skips the plugin catalog (stop and resume only
	// flip the stop flag: an emergency stop must not be blocked by a
	// catalog that changed since the document was written).
	SkipPluginCheck bool
	// Guards are more compares of the write's Txn (that a release the
	// document names is still published): when one fails, the write is
	// ErrConflict, as when the scope changed.
	Guards []clientv3.Cmp
}

// Result is what a successful write produced.
type Result struct {
	Scope string `json:"scope"`
	Seq   int64  `json:"seq"`
	// Revision is the etcd revision of the write: hosts acknowledge it
	// in their registration's applied.revision.
	Revision int64     `json:"revision"`
	Time     time.Time `json:"time"`
}

// Set validates w.State and writes it as the scope's next document: one
// Txn that puts the scope key and the history record, if and only if the
// scope key's mod revision is still w.BaseRevision.
func (s *Store) Set(ctx context.Context, w Write) (res Result, err error) {
	defer func() { s.count(w.Scope.Kind, err) }()
	if w.Author == "" {
		return res, errors.New("store: a write needs an author")
	}
	if !w.SkipPluginCheck {
		if err := desired.Check(w.State, s.opts.Validate); err != nil {
			return res, err
		}
	}
	cur, err := s.Get(ctx, w.Scope)
	if err != nil {
		return res, err
	}
	base := cur.Revision
	if w.IfRevision != nil && *w.IfRevision != cur.Revision {
		return res, conflict(w.Scope, cur)
	}
	doc := api.Document{
		Scope:   w.Scope.String(),
		Seq:     cur.Document.Seq + 1,
		Author:  w.Author,
		Time:    s.opts.Now().UTC(),
		Comment: w.Comment,
		State:   w.State,
	}
	val, err := json.Marshal(doc)
	if err != nil {
		return res, fmt.Errorf("encoding %s: %w", w.Scope, err)
	}
	if err := desired.CheckSize(len(val), len(val), s.opts.MaxRequestBytes); err != nil {
		return res, err
	}
	ks := s.opts.Keyspace
	key, hkey := ks.ScopeKey(w.Scope), ks.HistoryEntry(w.Scope, doc.Seq)
	cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", base),
		clientv3.Compare(clientv3.CreateRevision(hkey), "=", 0)}, w.Guards...)
	resp, err := s.cli.Txn(ctx).
		If(cmps...).
		Then(clientv3.OpPut(key, string(val)), clientv3.OpPut(hkey, string(val))).
		Commit()
	if err != nil {
		return res, fmt.Errorf("writing %s: %w", w.Scope, err)
	}
	if !resp.Succeeded {
		now, gerr := s.Get(ctx, w.Scope)
		if gerr != nil {
			return res, fmt.Errorf("%w: %s changed while writing", ErrConflict, w.Scope)
		}
		if now.Revision == base && len(w.Guards) > 0 {
			return res, fmt.Errorf("%w: what %s's new document depends on changed while writing; read it again and retry", ErrConflict, w.Scope)
		}
		return res, conflict(w.Scope, now)
	}
	return Result{Scope: doc.Scope, Seq: doc.Seq, Revision: resp.Header.Revision, Time: doc.Time}, nil
}

func conflict(scope api.Scope, now Current) error {
	return fmt.Errorf("%w: %s was changed by %s (seq %d, revision %d) since it was read; read it again and retry",
		ErrConflict, scope, now.Document.Author, now.Document.Seq, now.Revision)
}

func (s *Store) count(kind api.ScopeKind, err error) {
	if s.opts.OnWrite == nil {
		return
	}
	switch {
	case err == nil:
		s.opts.OnWrite(kind, "ok")
	case errors.Is(err, ErrConflict):
		s.opts.OnWrite(kind, "conflict")
	case errors.Is(err, desired.ErrInvalid), errors.Is(err, desired.ErrTooLarge):
		s.opts.OnWrite(kind, "invalid")
	default:
		s.opts.OnWrite(kind, "error")
	}
}

// SetStop sets (stop) or clears (resume) the stop flag of a scope and keeps
// the rest of its document: one write. A concurrent change is retried a few
// times, since the flag does not depend on the rest of the document.
// Clearing removes the flag, so a wider scope's stop still applies.
func (s *Store) SetStop(ctx context.Context, scope api.Scope, stop bool, author, comment string) (Result, error) {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var cur Current
		cur, err = s.Get(ctx, scope)
		if err != nil {
			return Result{}, err
		}
		st := cur.Document.State
		if stop {
			t := true
			st.Stop = &t
		} else {
			st.Stop = nil
		}
		var res Result
		res, err = s.Set(ctx, Write{Scope: scope, State: st, Author: author, Comment: comment,
			IfRevision: &cur.Revision, SkipPluginCheck: true})
		if err == nil || !errors.Is(err, ErrConflict) {
			return res, err
		}
	}
	return Result{}, err
}
