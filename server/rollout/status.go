package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/registry"
	"github.com/vigil-hids/vigil/server/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// MaxFailures bounds the failures Status names.
const MaxFailures = 1000

// NoState is how Status counts hosts that report no update for a release.
const NoState = "none"

// Status is how far a release's rollout is across the hosts a scope
// targets, from what they report in their registrations.
type Status struct {
	Release string `json:"release"`
	Scope   string `json:"scope"`
	// Desired is the version the scope's documents ask for (fleet; fleet
	// ⊕ group; a host's full merge), Rollout its percentage; hosts covered
	// by a narrower document may be asked for another.
	Desired string       `json:"desired,omitempty"`
	Rollout *api.Rollout `json:"rollout,omitempty"`
	// Hosts counts the registered hosts the scope targets; Reporting
	// those that report the release (a running version or an update).
	Hosts     int64 `json:"hosts"`
	Reporting int64 `json:"reporting"`
	// Versions counts reporting hosts per running version ("" when the
	// host reports an update but no running version yet).
	Versions map[string]int64 `json:"versions"`
	// States counts reporting hosts per update state (api.Update*), NoState
	// for hosts that never reported one.
	States map[string]int64 `json:"states"`
	// Targets counts reporting hosts per update target version.
	Targets map[string]int64 `json:"targets"`
	// Failures name up to MaxFailures hosts whose latest update was
	// refused, failed or rolled back, sorted by host; FailureCount is how
	// many there are.
	Failures     []Failure `json:"failures"`
	FailureCount int64     `json:"failure_count"`
	// AtRevision is the etcd revision the registrations were read at.
	AtRevision int64 `json:"at_revision"`
	// Expected counts the hosts by the version each is asked to run, as
	// the host computes it: the narrowest document that applies to it and
	// names a version (host, then its groups, then the fleet), and that
	// document's rollout percentage for the host's stable bucket; "" when
	// none asks for one (the host keeps what it runs).
	Expected map[string]int64 `json:"expected"`
	// OnTarget counts the hosts asked for a version that run it (installed
	// as that release, or reporting that version); Pending those asked for
	// a version they do not run yet, refused, failed and rolled back
	// included.
	OnTarget int64 `json:"on_target"`
	Pending  int64 `json:"pending"`
}

// Failure is one host whose update did not succeed.
type Failure struct {
	Host    string `json:"host"`
	Running string `json:"running,omitempty"`
	Target  string `json:"target"`
	State   string `json:"state"`
	Error   string `json:"error,omitempty"`
}

// Failed reports whether an update state is a failure.
func Failed(state string) bool {
	return state == api.UpdateRefused || state == api.UpdateFailed || state == api.UpdateRolledBack
}

func (st *Status) add(host string, r registry.Release) {
	st.Reporting++
	st.Versions[r.Version]++
	state := r.State
	if state == "" {
		state = NoState
	} else {
		st.Targets[r.Target]++
	}
	st.States[state]++
	if Failed(state) {
		st.FailureCount++
		st.Failures = append(st.Failures, Failure{Host: host, Running: r.Version, Target: r.Target, State: state, Error: r.Error})
	}
}

func (st *Status) finish() {
	sort.Slice(st.Failures, func(i, j int) bool { return st.Failures[i].Host < st.Failures[j].Host })
	if len(st.Failures) > MaxFailures {
		st.Failures = st.Failures[:MaxFailures:MaxFailures]
	}
}

// Status aggregates release across the hosts scope targets: from the
// registration index when it is synced up to the current revision (no
// etcd range read), otherwise by reading every registration.
func (s *Service) Status(ctx context.Context, release string, scope api.Scope) (Status, error) {
	if err := checkRelease(release); err != nil {
		return Status{}, err
	}
	want, err := s.effectiveAt(ctx, scope, release)
	if err != nil {
		return Status{}, err
	}
	targetOf, err := s.targets(ctx, release)
	if err != nil {
		return Status{}, err
	}
	st := Status{Release: release, Scope: scope.String(), Desired: want.Version, Rollout: want.Rollout,
		Versions: map[string]int64{}, States: map[string]int64{}, Targets: map[string]int64{}, Failures: []Failure{},
		Expected: map[string]int64{}}
	st.AtRevision, err = s.eachHost(ctx, scope, func(name string, h registry.Host) {
		st.Hosts++
		r, ok := h.Release(release)
		if ok {
			st.add(name, r)
		}
		st.expect(targetOf(name, h.Labels), r, ok)
	}, func(a store.Agent) {
		st.Hosts++
		r, ok := fromRegistration(a.Registration, release)
		if ok {
			st.add(a.Name, r)
		}
		st.expect(targetOf(a.Name, a.Labels), r, ok)
	})
	if err != nil {
		return st, err
	}
	st.finish()
	return st, nil
}

// expect counts a host asked for target, which reports r (ok) for the
// release.
func (st *Status) expect(target string, r registry.Release, ok bool) {
	st.Expected[target]++
	switch {
	case target == "":
	case ok && (r.State == api.UpdateInstalled && r.Target == target || r.State == "" && r.Version == target):
		st.OnTarget++
	default:
		st.Pending++
	}
}

// targets reads every desired-state document once and returns what
// version of release a host of that name and labels is asked to run, as
// the host computes it (api.Merge keeps the narrowest layer's version and
// rollout; api.TargetVersion applies the rollout to the host's bucket).
func (s *Service) targets(ctx context.Context, release string) (func(name string, labels map[string]string) string, error) {
	prefix := s.ks.Configs()
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", prefix, err)
	}
	pairs := map[string]pair{}
	for _, kv := range resp.Kvs {
		var d api.Document
		if err := json.Unmarshal(kv.Value, &d); err != nil {
			return nil, fmt.Errorf("decoding %s: %w", kv.Key, err)
		}
		if p := get(d.State, release); p.Version != "" {
			pairs[d.Scope] = p
		}
	}
	return func(name string, labels map[string]string) string {
		if len(pairs) == 0 {
			return ""
		}
		var p pair
		for _, sc := range api.HostScopes(name, labels) {
			if q, ok := pairs[sc.String()]; ok {
				p = q
			}
		}
		return api.TargetVersion(name, release, p.Version, p.Rollout)
	}, nil
}

// eachHost calls one of its functions for every registered host scope
// selects: fromIndex, from the registration index when it is synced up
// to the current revision (no etcd range read), or else fromEtcd, for each
// registration read from etcd. It returns the revision the index
// reflects (0 after a read from etcd). fromIndex runs under the index's
// read lock and must not block.
func (s *Service) eachHost(ctx context.Context, scope api.Scope, fromIndex func(name string, h registry.Host), fromEtcd func(a store.Agent)) (int64, error) {
	sel, only := store.ForScope(scope)
	match := func(name string, labels map[string]string) bool {
		if only != "" {
			return name == only
		}
		return sel.Matches(labels)
	}
	if s.x != nil && s.syncIndex(ctx) {
		// Each calls nothing unless the index is synced, so a refusal
		// here leaves nothing half counted.
		rev, err := s.x.Each(func(name string, h registry.Host) {
			if match(name, h.Labels) {
				fromIndex(name, h)
			}
		})
		if err == nil {
			return rev, nil
		}
	}
	err := s.st.Each(ctx, func(a store.Agent) error {
		if match(a.Name, a.Labels) {
			fromEtcd(a)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("reading registrations: %w", err)
	}
	return 0, nil
}

// hostPlatforms counts the registered hosts of scope a version of release
// reaches, by platform ("os/arch", registry.UnknownPlatform for agents
// that do not report theirs): every host the scope selects, or with
// percent in 1..99 those whose stable bucket is below it.
func (s *Service) hostPlatforms(ctx context.Context, scope api.Scope, release string, percent int) (map[string]int64, error) {
	partial := percent > 0 && percent < 100
	n := map[registry.Platform]int64{}
	_, err := s.eachHost(ctx, scope, func(name string, h registry.Host) {
		if !partial || api.RolloutBucket(name, release) < percent {
			n[h.Platform()]++
		}
	}, func(a store.Agent) {
		if !partial || api.RolloutBucket(a.Name, release) < percent {
			n[registry.Platform{OS: a.OS, Arch: a.Arch}]++
		}
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(n))
	for p, c := range n {
		out[p.String()] += c
	}
	return out, nil
}

// syncIndex waits (briefly) until the index reflects the current etcd
// revision, so an answer from memory includes every report made before the
// request.
func (s *Service) syncIndex(ctx context.Context) bool {
	resp, err := s.cli.Get(ctx, s.ks.Agents())
	if err != nil {
		return false
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return s.x.Sync(sctx, resp.Header.Revision)
}

// fromRegistration is registry.Host.Release for a registration read from
// etcd.
func fromRegistration(reg api.Registration, release string) (registry.Release, bool) {
	r := registry.Release{Name: release}
	var u *api.UpdateStatus
	if release == api.HostReleaseName {
		if reg.Version == "" && reg.HostUpdate == nil {
			return r, false
		}
		r.Version, u = reg.Version, reg.HostUpdate
	} else {
		p, ok := reg.Plugins[release]
		if !ok {
			return r, false
		}
		r.Version, u = p.Version, p.Update
	}
	if u != nil {
		r.Target, r.State, r.Error = u.Target, u.State, u.Error
	}
	return r, true
}
