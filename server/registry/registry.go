// Package registry keeps an in-memory index of host registrations: it
// lists the registration prefix once, then follows it with a watch (and
// lists again after a compaction or a broken watch). Counting hosts by
// label and computing acknowledgement progress then cost a walk over
// small structs in memory instead of a full range read and JSON decoding of
// every registration on each poll.
package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"
	"unique"
	"unsafe"

	"github.com/vigil-hids/vigil/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Host is what the index keeps of one registration.
type Host struct {
	// Labels are the registration's labels.
	Labels map[string]string
	// Applied is the acknowledged desired-state revision.
	Applied int64
	// Mismatch is true when the value names another host than the key,
	// or does not decode.
	Mismatch bool
	// platform is the host's os and arch, interned: it costs a host one
	// pointer.
	platform unique.Handle[platformKey]
	// Releases are what the host reports of each release it runs: every
	// plugin's version and latest update, and its own (api.HostReleaseName),
	// sorted by name. Most hosts of a fleet report the same few states, so
	// each is interned: a host holds one pointer per release.
	Releases []unique.Handle[Release]
}

// Release is one release name's state on a host.
type Release struct {
	Name    string
	Version string
	// Target, State and Error are the latest api.UpdateStatus; State is
	// "" when the host reported none.
	Target, State, Error string
}

// UnknownPlatform is how a host that does not report its platform (an
// agent older than api.Registration.OS) is named.
const UnknownPlatform = "unknown"

// Platform is a host's os and arch; zero when it reports none.
type Platform struct{ OS, Arch string }

// String is "os/arch", or UnknownPlatform.
func (p Platform) String() string {
	if p.OS == "" || p.Arch == "" {
		return UnknownPlatform
	}
	return api.Platform(p.OS, p.Arch)
}

// Platform returns the host's platform (zero: unknown). It allocates
// nothing, so callers count hosts by it in a map keyed by Platform.
func (h Host) Platform() Platform {
	if h.platform == (unique.Handle[platformKey]{}) {
		return Platform{}
	}
	k := h.platform.Value()
	return Platform{OS: k.os.Value(), Arch: k.arch.Value()}
}

type platformKey struct{ os, arch unique.Handle[string] }

// part is a registration's os or arch, interned while it is decoded: no
// string is allocated per host (a short-lived small string shares the
// tiny allocator's blocks with the labels' strings the index keeps, and
// cost 16 heap bytes a host, measured by BenchmarkIndexMemory).
type part struct{ h unique.Handle[string] }

func (p *part) UnmarshalJSON(b []byte) error {
	if len(b) > 2 && b[0] == '"' && b[len(b)-1] == '"' && bytes.IndexByte(b, '\\') < 0 {
		// unique.Make copies a string it keeps: a view of b is enough.
		p.h = unique.Make(unsafe.String(&b[1], len(b)-2))
		return nil
	}
	var v *string
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	if p.h = (unique.Handle[string]{}); v != nil && *v != "" {
		p.h = unique.Make(*v)
	}
	return nil
}

// Release returns the host's entry for name.
func (h Host) Release(name string) (Release, bool) {
	for _, r := range h.Releases {
		if v := r.Value(); v.Name == name {
			return v, true
		}
	}
	return Release{}, false
}

// Index is a live index of one keyspace's registrations.
type Index struct {
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger

	mu     sync.RWMutex
	hosts  map[string]Host
	rev    int64 // etcd revision the index reflects
	synced bool
	cond   chan struct{} // closed and replaced on each change

	ready     chan struct{}
	readyOnce sync.Once
	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// Start lists the registrations and follows them until Close. It returns
// at once; Ready is closed after the first complete list.
func Start(cli *clientv3.Client, ks api.Keyspace, log *slog.Logger) *Index {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	x := &Index{cli: cli, prefix: ks.Agents(), log: log.With("component", "registry"), hosts: map[string]Host{},
		cond: make(chan struct{}), ready: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	go x.run(ctx)
	return x
}

// Ready is closed once the index has listed every registration.
func (x *Index) Ready() <-chan struct{} { return x.ready }

// Close stops following etcd; it may be called more than once.
func (x *Index) Close() {
	x.closeOnce.Do(func() {
		x.cancel()
		<-x.done
	})
}

func (x *Index) run(ctx context.Context) {
	defer close(x.done)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		rev, err := x.list(ctx)
		if err == nil {
			backoff = 100 * time.Millisecond
			err = x.follow(ctx, rev)
		}
		x.mu.Lock()
		x.synced = false
		x.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		x.log.Warn("registration index resyncing", "error", err.Error(), "backoff", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// list reads the prefix in pages at one revision and replaces the index.
func (x *Index) list(ctx context.Context) (int64, error) {
	end := clientv3.GetPrefixRangeEnd(x.prefix)
	key := x.prefix
	hosts := map[string]Host{}
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(5000)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := x.cli.Get(ctx, key, opts...)
		if err != nil {
			return 0, fmt.Errorf("listing registrations: %w", err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			name := string(kv.Key[len(x.prefix):])
			hosts[name] = decode(name, kv.Value)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		key = string(append(bytes.Clone(resp.Kvs[len(resp.Kvs)-1].Key), 0))
	}
	x.mu.Lock()
	x.hosts, x.rev, x.synced = hosts, rev, true
	x.signal()
	x.mu.Unlock()
	x.readyOnce.Do(func() { close(x.ready) })
	return rev, nil
}

func (x *Index) follow(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := x.cli.Watch(wctx, x.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify())
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watching registrations: %w", err)
		}
		x.mu.Lock()
		for _, ev := range resp.Events {
			name := string(ev.Kv.Key[len(x.prefix):])
			if ev.Type == clientv3.EventTypeDelete {
				delete(x.hosts, name)
			} else {
				x.hosts[name] = decode(name, ev.Kv.Value)
			}
		}
		if resp.Header.Revision > x.rev {
			x.rev = resp.Header.Revision
		}
		x.signal()
		x.mu.Unlock()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("registry: watch closed")
}

// signal wakes WaitRevision callers; x.mu must be held.
func (x *Index) signal() {
	close(x.cond)
	x.cond = make(chan struct{})
}

func decode(name string, v []byte) Host {
	var l struct {
		Host    string            `json:"host"`
		Labels  map[string]string `json:"labels"`
		Applied struct {
			Revision int64 `json:"revision"`
		} `json:"applied"`
		Version string                   `json:"version"`
		OS      part                     `json:"os"`
		Arch    part                     `json:"arch"`
		Update  *updateStatus            `json:"host_update"`
		Plugins map[string]releaseStatus `json:"plugins"`
	}
	if err := json.Unmarshal(v, &l); err != nil {
		return Host{Mismatch: true}
	}
	h := Host{Labels: l.Labels, Applied: l.Applied.Revision, Mismatch: l.Host != name}
	if none := (unique.Handle[string]{}); l.OS.h != none && l.Arch.h != none {
		h.platform = unique.Make(platformKey{l.OS.h, l.Arch.h})
	}
	if n := len(l.Plugins) + 1; n > 1 || l.Version != "" || l.Update != nil {
		h.Releases = make([]unique.Handle[Release], 0, n)
	}
	if l.Version != "" || l.Update != nil {
		h.Releases = append(h.Releases, release(api.HostReleaseName, l.Version, l.Update))
	}
	for p, st := range l.Plugins {
		h.Releases = append(h.Releases, release(p, st.Version, st.Update))
	}
	sort.Slice(h.Releases, func(i, j int) bool { return h.Releases[i].Value().Name < h.Releases[j].Value().Name })
	return h
}

// releaseStatus and updateStatus are the parts of api.PluginStatus and
// api.UpdateStatus the index keeps; skipping the rest (times above all)
// keeps decoding cheap.
type releaseStatus struct {
	Version string        `json:"version"`
	Update  *updateStatus `json:"update"`
}

type updateStatus struct {
	Target string `json:"target"`
	State  string `json:"state"`
	Error  string `json:"error"`
}

func release(name, version string, u *updateStatus) unique.Handle[Release] {
	r := Release{Name: name, Version: version}
	if u != nil {
		r.Target, r.State, r.Error = u.Target, u.State, u.Error
	}
	return unique.Make(r)
}

// ErrNotSynced means the index is (re)listing; callers read etcd instead.
var ErrNotSynced = errors.New("registry: index not synced")

// WaitRevision waits until the index reflects etcd revision rev or later,
// or ctx ends. Changes outside the registration prefix do not advance the
// index, so callers bound the wait.
func (x *Index) WaitRevision(ctx context.Context, rev int64) bool {
	for {
		x.mu.RLock()
		ok, ch := x.synced && x.rev >= rev, x.cond
		x.mu.RUnlock()
		if ok {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-ch:
		}
	}
}

// Revision returns the etcd revision the index reflects, and whether it
// has listed the registrations at all.
func (x *Index) Revision() (rev int64, synced bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.rev, x.synced
}

// Each calls fn for every host under a read lock, with the revision the
// index reflects; fn must not block.
func (x *Index) Each(fn func(name string, h Host)) (rev int64, err error) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if !x.synced {
		return 0, ErrNotSynced
	}
	for name, h := range x.hosts {
		fn(name, h)
	}
	return x.rev, nil
}

// Get returns one host.
func (x *Index) Get(name string) (Host, int64, bool, error) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if !x.synced {
		return Host{}, 0, false, ErrNotSynced
	}
	h, ok := x.hosts[name]
	return h, x.rev, ok, nil
}

// Sync waits (within ctx) until the index reflects revision rev, asking
// etcd for a watch progress notification if no registration changed since
// rev. It reports whether the index got there.
//
// A request can go unanswered: etcd drops it while the stream has a
// watcher still catching up, or before the index's watch is open (its
// first listing racing rev). So it is asked again, at growing intervals up
// to a second, until the index gets there or ctx ends.
func (x *Index) Sync(ctx context.Context, rev int64) bool {
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		x.mu.RLock()
		ok := x.synced && x.rev >= rev
		x.mu.RUnlock()
		if ok {
			return true
		}
		_ = x.cli.RequestProgress(clientv3.WithRequireLeader(ctx))
		wctx, cancel := context.WithTimeout(ctx, wait)
		ok = x.WaitRevision(wctx, rev)
		cancel()
		if ok {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
	}
}
