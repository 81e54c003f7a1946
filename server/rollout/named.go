package rollout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigil-hids/vigil/api"
)

// NamedGuards checks the release versions a desired-state document st
// names (each plugin's version and rollout from, host_version and its
// rollout from) before a raw config write (`config set`): a version prev,
// the scope's current document, does not name already must be published
// on some platform. It returns the compares that hold while the manifests
// of every published version st names are unchanged, so the write cannot
// land after a concurrent `release rm` of one (as rollout set's cannot).
// A version prev names already and that is no longer published is let
// through unguarded: an unrelated edit of the document is not blocked by
// what it asked for before.
func (s *Service) NamedGuards(ctx context.Context, st, prev api.DesiredState) ([]clientv3.Cmp, error) {
	var guards []clientv3.Cmp
	var errs []error
	before := named(prev)
	for _, ref := range named(st) {
		_, g, err := s.publishedGuard(ctx, ref.release, ref.version)
		switch {
		case errors.Is(err, ErrNoRelease) && slices.Contains(before, ref):
		case errors.Is(err, ErrNoRelease):
			errs = append(errs, fmt.Errorf("%s %s: %w", ref.field, ref.version, err))
		case err != nil:
			return nil, err
		default:
			guards = append(guards, g...)
		}
	}
	return guards, errors.Join(errs...)
}

// versionRef is one release version a document names, and where.
type versionRef struct {
	release, version, field string
}

// named lists the release versions st names, sorted by field.
func named(st api.DesiredState) []versionRef {
	var out []versionRef
	add := func(release string, p pair, field string) {
		if p.Version != "" {
			out = append(out, versionRef{release, p.Version, field + ".version"})
		}
		if p.Rollout != nil && p.Rollout.From != "" {
			out = append(out, versionRef{release, p.Rollout.From, field + ".rollout.from"})
		}
	}
	for name := range st.Plugins {
		add(name, get(st, name), "plugins."+name)
	}
	if p := get(st, api.HostReleaseName); p.Version != "" {
		out = append(out, versionRef{api.HostReleaseName, p.Version, "host_version"})
	}
	if r := st.HostRollout; r != nil && r.From != "" {
		out = append(out, versionRef{api.HostReleaseName, r.From, "host_rollout.from"})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].field < out[j].field })
	return out
}
