package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Agent is a registration as listed: the host name comes from the key (the
// part etcd's prefix permissions protect least, so it is checked against
// the value), Mismatch says when the value names another host.
type Agent struct {
	Name string `json:"name"`
	api.Registration
	// Revision is the registration key's mod revision.
	Revision int64 `json:"revision"`
	// Mismatch is set when the value's host field is not the key's name:
	// a host wrote someone else's registration, or a bug did.
	Mismatch string `json:"mismatch,omitempty"`
}

// Selector picks registrations by labels (all must match).
type Selector map[string]string

// ParseSelector reads "k=v" pairs.
func ParseSelector(pairs []string) (Selector, error) {
	sel := Selector{}
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || !api.ValidName(k) || !api.ValidName(v) {
			return nil, fmt.Errorf("label selector %q: want LABEL=VALUE", p)
		}
		sel[k] = v
	}
	return sel, nil
}

// Matches reports whether labels satisfy the selector.
func (s Selector) Matches(labels map[string]string) bool {
	for k, v := range s {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// ForScope is the selector of the hosts a scope targets; for a host scope
// it is empty and host is the name.
func ForScope(scope api.Scope) (sel Selector, host string) {
	switch scope.Kind {
	case api.ScopeGroup:
		return Selector{scope.Label: scope.Value}, ""
	case api.ScopeHost:
		return Selector{}, scope.Host
	}
	return Selector{}, ""
}

// lite is the part of a registration that counting and progress need;
// decoding it skips the plugin map.
type lite struct {
	Host    string            `json:"host"`
	Labels  map[string]string `json:"labels"`
	Applied struct {
		Revision int64 `json:"revision"`
	} `json:"applied"`
}

// scan calls fn for each registration, reading pages of PageSize keys at
// one revision so the listing is consistent. It returns that revision.
func (s *Store) scan(ctx context.Context, fn func(name string, kv []byte, modRev int64) error) (int64, error) {
	prefix := s.opts.Keyspace.Agents()
	end := clientv3.GetPrefixRangeEnd(prefix)
	key := prefix
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(s.opts.PageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, key, opts...)
		if err != nil {
			return rev, fmt.Errorf("reading registrations: %w", err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := fn(string(kv.Key[len(prefix):]), kv.Value, kv.ModRevision); err != nil {
				return rev, err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		key = string(append(bytes.Clone(resp.Kvs[len(resp.Kvs)-1].Key), 0))
	}
}

// Each calls fn for every registration, in name order, without holding
// them all in memory.
func (s *Store) Each(ctx context.Context, fn func(Agent) error) error {
	_, err := s.scan(ctx, func(name string, v []byte, rev int64) error {
		a := Agent{Name: name, Revision: rev}
		if err := json.Unmarshal(v, &a.Registration); err != nil {
			a.Mismatch = "undecodable registration: " + err.Error()
		} else if a.Host != name {
			a.Mismatch = fmt.Sprintf("value names host %q", a.Host)
		}
		return fn(a)
	})
	return err
}

// Agents lists the registrations that match sel, sorted by name, at most
// limit (zero means all).
func (s *Store) Agents(ctx context.Context, sel Selector, limit int) ([]Agent, error) {
	out := []Agent{}
	err := s.Each(ctx, func(a Agent) error {
		if (limit <= 0 || len(out) < limit) && sel.Matches(a.Labels) {
			out = append(out, a)
		}
		return nil
	})
	return out, err
}

// syncIndex brings the index up to the current etcd revision (read with
// a single-key Get, O(1)) or rev, whichever is newer, so that an answer from
// memory includes every write that preceded the request. It reports
// whether the index got there within a short bound.
func (s *Store) syncIndex(ctx context.Context, rev int64) bool {
	resp, err := s.cli.Get(ctx, s.opts.Keyspace.Agents())
	if err != nil {
		return false
	}
	rev = max(rev, resp.Header.Revision)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return s.opts.Index.Sync(sctx, rev)
}

// indexAnswers reports whether Progress answers from the index: when the
// index caught up with the cell (fresh), or when it did not but holds the
// change (at rev, at least the change's revision want) and advanced while
// the request waited (from before). That is the index during an
// acknowledgement storm, trailing the cell by seconds as the cell's watch
// delivery falls behind: its answer is exact as of rev (AtRevision), and
// the scan instead would read every registration from etcd — at 100,000
// hosts per cell tens of megabytes per poll of `fleet stop --wait` — while
// the cell is busiest. An index that did not move is not trusted; the scan
// answers.
func indexAnswers(fresh bool, before, rev, want int64) bool {
	return fresh || (rev >= want && rev > before)
}

// Count is the number of registrations, optionally grouped by a label.
type Count struct {
	Total int64 `json:"total"`
	// By is the label grouped by, and Groups the count per value ("" for
	// hosts without the label).
	By     string           `json:"by,omitempty"`
	Groups map[string]int64 `json:"groups,omitempty"`
}

// Count counts registrations matching sel, grouped by label by if set.
// With neither a selector nor a label it is a count-only range read: etcd
// returns a number, not 100k values.
func (s *Store) Count(ctx context.Context, sel Selector, by string) (Count, error) {
	if len(sel) == 0 && by == "" {
		resp, err := s.cli.Get(ctx, s.opts.Keyspace.Agents(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return Count{}, fmt.Errorf("counting registrations: %w", err)
		}
		return Count{Total: resp.Count}, nil
	}
	c := Count{By: by}
	if by != "" {
		c.Groups = map[string]int64{}
	}
	if x := s.opts.Index; x != nil && s.syncIndex(ctx, 0) {
		_, err := x.Each(func(_ string, h registry.Host) {
			if sel.Matches(h.Labels) {
				c.Total++
				if by != "" {
					c.Groups[h.Labels[by]]++
				}
			}
		})
		if err == nil {
			return c, nil
		}
	}
	_, err := s.scan(ctx, func(_ string, v []byte, _ int64) error {
		var l lite
		if json.Unmarshal(v, &l) != nil || !sel.Matches(l.Labels) {
			return nil
		}
		c.Total++
		if by != "" {
			c.Groups[l.Labels[by]]++
		}
		return nil
	})
	return c, err
}

// Progress is how far the hosts a scope targets have acknowledged a write.
type Progress struct {
	Scope    string `json:"scope"`
	Revision int64  `json:"revision"`
	// Targeted counts the registered hosts the scope applies to;
	// Acknowledged those whose applied.revision is at least Revision.
	Targeted     int64 `json:"targeted"`
	Acknowledged int64 `json:"acknowledged"`
	// Stragglers names up to MaxStragglers hosts that have not
	// acknowledged, sorted; StragglerCount is how many there are.
	Stragglers     []string `json:"stragglers"`
	StragglerCount int64    `json:"straggler_count"`
	// AtRevision is the etcd revision the registrations were read at.
	AtRevision int64 `json:"at_revision"`
}

// Done reports whether every targeted host acknowledged.
func (p Progress) Done() bool { return p.Acknowledged == p.Targeted }

func (p *Progress) add(name string, acked bool) {
	p.Targeted++
	if acked {
		p.Acknowledged++
		return
	}
	p.StragglerCount++
	p.Stragglers = append(p.Stragglers, name)
}

// finish sorts the stragglers and keeps the first MaxStragglers.
func (p *Progress) finish() {
	sort.Strings(p.Stragglers)
	if len(p.Stragglers) > MaxStragglers {
		p.Stragglers = p.Stragglers[:MaxStragglers:MaxStragglers]
	}
}

// MaxStragglers bounds the names Progress returns.
const MaxStragglers = 1000

// Progress computes acknowledgement of revision by the hosts scope targets.
func (s *Store) Progress(ctx context.Context, scope api.Scope, revision int64) (Progress, error) {
	p := Progress{Scope: scope.String(), Revision: revision, Stragglers: []string{}}
	sel, host := ForScope(scope)
	if x := s.opts.Index; x != nil && host == "" {
		before, _ := x.Revision()
		fresh := s.syncIndex(ctx, revision)
		if now, synced := x.Revision(); synced && indexAnswers(fresh, before, now, revision) {
			rev, err := x.Each(func(name string, h registry.Host) {
				if sel.Matches(h.Labels) {
					p.add(name, h.Applied >= revision)
				}
			})
			if err == nil {
				p.AtRevision = rev
				p.finish()
				return p, nil
			}
			p = Progress{Scope: scope.String(), Revision: revision, Stragglers: []string{}}
		}
	}
	check := func(name string, v []byte) {
		var l lite
		if json.Unmarshal(v, &l) != nil || !sel.Matches(l.Labels) {
			return
		}
		p.add(name, l.Applied.Revision >= revision)
	}
	if host != "" {
		resp, err := s.cli.Get(ctx, s.opts.Keyspace.Agent(host))
		if err != nil {
			return p, fmt.Errorf("reading registration of %s: %w", host, err)
		}
		p.AtRevision = resp.Header.Revision
		for _, kv := range resp.Kvs {
			check(host, kv.Value)
		}
		return p, nil
	}
	rev, err := s.scan(ctx, func(name string, v []byte, _ int64) error { check(name, v); return nil })
	p.AtRevision = rev
	p.finish()
	return p, err
}
