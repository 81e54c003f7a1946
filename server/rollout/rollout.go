package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/coreos/go-semver/semver"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/registry"
	"github.com/vigil-hids/vigil/server/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// SetRequest moves a release's desired version at one scope.
type SetRequest struct {
	Scope api.Scope `json:"-"`
	// Plugin is the release name: a plugin, or api.HostReleaseName for
	// vigil-host itself (DesiredState.HostVersion).
	Plugin  string `json:"plugin"`
	Version string `json:"version"`
	// Percent limits the version to that share of the scope's hosts,
	// picked by api.RolloutBucket; 0 and 100 mean every host.
	Percent int    `json:"percent,omitempty"`
	Author  string `json:"-"`
	Comment string `json:"comment,omitempty"`
	// RequirePlatforms refuses the write (ErrUnpublishedPlatform) when
	// hosts it targets run a platform the version is not published for;
	// without it they are only named in SetResult.Warnings.
	RequirePlatforms bool `json:"require_platforms,omitempty"`
}

// UndoRequest restores a release's previous desired version at one scope.
type UndoRequest struct {
	Scope            api.Scope
	Plugin           string
	Author           string
	Comment          string
	RequirePlatforms bool
}

// ErrUnpublishedPlatform: with RequirePlatforms, registered hosts the
// version targets run a platform it is not published for.
var ErrUnpublishedPlatform = fmt.Errorf("%w: hosts the version targets run a platform it is not published for", ErrInvalid)

// SetResult is what a rollout write produced.
type SetResult struct {
	store.Result
	Plugin  string       `json:"plugin"`
	Version string       `json:"version"`
	Rollout *api.Rollout `json:"rollout,omitempty"`
	// Previous is the scope's own desired version before the write ("" if
	// it named none), PreviousRollout its rollout.
	Previous        string       `json:"previous,omitempty"`
	PreviousRollout *api.Rollout `json:"previous_rollout,omitempty"`
	Comment         string       `json:"comment"`
	// Platforms are the platforms ("os/arch") Version is published for
	// when it was written: hosts of any other platform report it failed.
	Platforms []string `json:"platforms,omitempty"`
	// HostPlatforms counts the registered hosts of the scope that Version
	// targets (with a percentage, those in it) by platform: "os/arch", or
	// "unknown" for agents that do not report theirs (never warned about).
	// Hosts that are offline, and hosts a narrower scope's document asks
	// for another version, are not told apart.
	HostPlatforms map[string]int64 `json:"host_platforms,omitempty"`
	// Warnings name the targeted hosts of each platform Version is not
	// published for: they report the update failed until it is.
	Warnings []string `json:"warnings,omitempty"`
}

// checkPlatforms counts the hosts of scope that version of release
// reaches (all, or those of a percent in 1..99) by platform, and words a
// warning for each platform among them that version is not published
// for. With strict, such a platform is an ErrUnpublishedPlatform.
func (s *Service) checkPlatforms(ctx context.Context, scope api.Scope, release, version string, percent int, published []string, strict bool) (map[string]int64, []string, error) {
	hosts, err := s.hostPlatforms(ctx, scope, release, percent)
	if err != nil {
		return nil, nil, err
	}
	var missing []string
	for p := range hosts {
		if p != registry.UnknownPlatform && !slices.Contains(published, p) {
			missing = append(missing, p)
		}
	}
	slices.Sort(missing)
	in := "in scope " + scope.String()
	if percent > 0 && percent < 100 {
		in = fmt.Sprintf("in the %d%% rollout of scope %s", percent, scope)
	}
	var warnings []string
	for _, p := range missing {
		n, verb, they := hosts[p], "run", "they"
		noun := "hosts"
		if n == 1 {
			noun, verb, they = "host", "runs", "it"
		}
		warnings = append(warnings, fmt.Sprintf("%d %s %s %s %s, which %s %s is not published for; %s will report failed until it is",
			n, noun, in, verb, p, release, version, they))
	}
	if strict && len(warnings) > 0 {
		return hosts, warnings, fmt.Errorf("%w: %s (publish %s %s for %s first, or leave out the platform requirement)",
			ErrUnpublishedPlatform, strings.Join(warnings, "; "), release, version, strings.Join(missing, ", "))
	}
	return hosts, warnings, nil
}

// pair is one release's desired version and rollout in a state.
type pair struct {
	Version string
	Rollout *api.Rollout
}

func (p pair) equal(q pair) bool {
	if p.Version != q.Version || (p.Rollout == nil) != (q.Rollout == nil) {
		return false
	}
	return p.Rollout == nil || *p.Rollout == *q.Rollout
}

func (p pair) String() string {
	switch {
	case p.Version == "":
		return "(none)"
	case p.Rollout == nil || p.Rollout.Percent >= 100:
		return p.Version
	case p.Rollout.From == "":
		return fmt.Sprintf("%s on %d%% (others keep theirs)", p.Version, p.Rollout.Percent)
	default:
		return fmt.Sprintf("%s on %d%% (others %s)", p.Version, p.Rollout.Percent, p.Rollout.From)
	}
}

func get(st api.DesiredState, release string) pair {
	if release == api.HostReleaseName {
		return pair{st.HostVersion, st.HostRollout}
	}
	p := st.Plugins[release]
	return pair{p.Version, p.Rollout}
}

// put sets release's pair in st; an empty version removes it, and a
// plugin entry left with nothing in it disappears.
func put(st *api.DesiredState, release string, p pair) {
	if release == api.HostReleaseName {
		st.HostVersion, st.HostRollout = p.Version, p.Rollout
		return
	}
	ps := st.Plugins[release]
	ps.Version, ps.Rollout = p.Version, p.Rollout
	if b, err := json.Marshal(ps); err == nil && string(b) == "{}" {
		delete(st.Plugins, release)
		return
	}
	if st.Plugins == nil {
		st.Plugins = map[string]api.PluginState{}
	}
	st.Plugins[release] = ps
}

// effectiveAt is release's pair as the scope's hosts derive it from the
// scope and the wider ones: fleet; fleet ⊕ group; a host's full merge.
func (s *Service) effectiveAt(ctx context.Context, scope api.Scope, release string) (pair, error) {
	switch scope.Kind {
	case api.ScopeHost:
		eff, err := s.st.Effective(ctx, scope.Host)
		if err != nil {
			return pair{}, err
		}
		return get(eff.State, release), nil
	case api.ScopeGroup:
		fleet, err := s.st.Get(ctx, api.Scope{Kind: api.ScopeFleet})
		if err != nil {
			return pair{}, err
		}
		group, err := s.st.Get(ctx, scope)
		if err != nil {
			return pair{}, err
		}
		return get(api.Merge(fleet.Document.State, group.Document.State), release), nil
	}
	fleet, err := s.st.Get(ctx, scope)
	if err != nil {
		return pair{}, err
	}
	return get(fleet.Document.State, release), nil
}

func checkVersion(v string) error {
	if _, err := semver.NewVersion(v); err != nil {
		return fmt.Errorf("%w: version must be semver MAJOR.MINOR.PATCH (got %q)", ErrInvalid, v)
	}
	return nil
}

// Set writes r.Version as r.Plugin's desired version at r.Scope, keeping
// the rest of the scope's document: one versioned write with its history
// record. With a percent below 100 the rollout's From is the version the
// scope's hosts are asked to run now (or, when that is itself a partial
// rollout, its From), so the hosts outside the percentage stay where they
// are. A version that is not published (on any platform) is refused; the
// result names the platforms it is published for, counts the registered
// hosts it targets by platform, and warns about those of a platform it is
// not published for (refused instead with r.RequirePlatforms).
func (s *Service) Set(ctx context.Context, r SetRequest) (SetResult, error) {
	if err := checkRelease(r.Plugin); err != nil {
		return SetResult{}, err
	}
	if err := checkVersion(r.Version); err != nil {
		return SetResult{}, err
	}
	if r.Percent < 0 || r.Percent > 100 {
		return SetResult{}, fmt.Errorf("%w: percent must be between 1 and 100 (got %d)", ErrInvalid, r.Percent)
	}
	platforms, err := s.published(ctx, r.Plugin, r.Version)
	if err != nil {
		return SetResult{}, err
	}
	for attempt := 0; attempt < 5; attempt++ {
		var cur store.Current
		if cur, err = s.st.Get(ctx, r.Scope); err != nil {
			return SetResult{}, err
		}
		var eff pair
		if eff, err = s.effectiveAt(ctx, r.Scope, r.Plugin); err != nil {
			return SetResult{}, err
		}
		next := pair{Version: r.Version}
		if r.Percent > 0 && r.Percent < 100 {
			from := eff.Version
			if eff.Rollout != nil && eff.Rollout.Percent < 100 {
				from = eff.Rollout.From
			}
			if from == r.Version {
				return SetResult{}, fmt.Errorf("%w: %s %s already runs on every host of %s; a percentage needs another version for the rest (set that version, or use rollout undo)",
					ErrInvalid, r.Plugin, r.Version, r.Scope)
			}
			next.Rollout = &api.Rollout{Percent: r.Percent, From: from}
		}
		// Hosts refuse a lower version unless it is a signed rollback: the
		// version asked for must be one; a computed From is replaced by
		// its rollback release (lowering a percentage).
		for _, d := range downgrades(eff, next) {
			if d.version != r.Version {
				continue
			}
			rb, rerr := s.rollbackRelease(ctx, r.Plugin, d)
			if rerr != nil {
				return SetResult{}, rerr
			}
			if rb != r.Version {
				return SetResult{}, fmt.Errorf("%w: %s %s would replace %s on some hosts, and hosts refuse a downgrade unless its manifest is a signed rollback; "+
					"%s is not one, but its signed rollback release %s is published: vigilctl rollout set %s %s --scope %s",
					ErrNeedsRollback, r.Plugin, r.Version, d.above, r.Version, rb, r.Plugin, rb, r.Scope)
			}
		}
		next, subst, rerr := s.withRollbacks(ctx, r.Plugin, eff, next)
		if rerr != nil {
			return SetResult{}, rerr
		}
		prev := get(cur.Document.State, r.Plugin)
		comment := fmt.Sprintf("rollout %s: %s -> %s", r.Plugin, prev, next)
		if len(subst) > 0 {
			comment += " (" + strings.Join(subst, ", ") + ")"
		}
		if r.Comment != "" {
			comment += ": " + r.Comment
		}
		st := cur.Document.State
		put(&st, r.Plugin, next)
		// The version must still be published when the write lands (a
		// concurrent `release rm` refuses only documents it can see).
		var guards []clientv3.Cmp
		if platforms, guards, err = s.publishedGuard(ctx, r.Plugin, next.Version); err != nil {
			return SetResult{}, err
		}
		if guards, err = s.guardFrom(ctx, r.Plugin, next, guards); err != nil {
			return SetResult{}, err
		}
		// Judged against the platforms the write is guarded on: a
		// platform removed since an earlier read is missing here too.
		var hosts map[string]int64
		var warnings []string
		if hosts, warnings, err = s.checkPlatforms(ctx, r.Scope, r.Plugin, r.Version, r.Percent, platforms, r.RequirePlatforms); err != nil {
			return SetResult{}, err
		}
		var res store.Result
		res, err = s.st.Set(ctx, store.Write{Scope: r.Scope, State: st, Author: r.Author, Comment: comment, IfRevision: &cur.Revision, Guards: guards})
		if err == nil {
			return SetResult{Result: res, Plugin: r.Plugin, Version: next.Version, Rollout: next.Rollout,
				Previous: prev.Version, PreviousRollout: prev.Rollout, Comment: comment, Platforms: platforms,
				HostPlatforms: hosts, Warnings: warnings}, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return SetResult{}, err
		}
	}
	return SetResult{}, err
}

// guardFrom adds to guards the compares that hold while the rollout's
// From version (a rollback release substituted for a lowered one, or the
// version the other hosts keep) is still published.
func (s *Service) guardFrom(ctx context.Context, plugin string, p pair, guards []clientv3.Cmp) ([]clientv3.Cmp, error) {
	if p.Rollout == nil || p.Rollout.From == "" || p.Rollout.From == p.Version {
		return guards, nil
	}
	_, more, err := s.publishedGuard(ctx, plugin, p.Rollout.From)
	if err != nil {
		return nil, err
	}
	return append(guards, more...), nil
}

// Undo restores plugin's previous desired version and rollout at scope:
// the newest history record whose pair differs from the current one (or
// none, if the scope's first document introduced the version). Only
// that pair changes; the rest of the current document stays. It is a new
// versioned write, so a second undo returns to where the first started.
func (s *Service) Undo(ctx context.Context, scope api.Scope, plugin, author, comment string) (SetResult, error) {
	return s.UndoWith(ctx, UndoRequest{Scope: scope, Plugin: plugin, Author: author, Comment: comment})
}

// UndoWith is Undo; with r.RequirePlatforms it is refused
// (ErrUnpublishedPlatform) when hosts the restored version targets run a
// platform it is not published for, as Set's.
func (s *Service) UndoWith(ctx context.Context, r UndoRequest) (SetResult, error) {
	scope, plugin, author, comment := r.Scope, r.Plugin, r.Author, r.Comment
	if err := checkRelease(plugin); err != nil {
		return SetResult{}, err
	}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var cur store.Current
		if cur, err = s.st.Get(ctx, scope); err != nil {
			return SetResult{}, err
		}
		now := get(cur.Document.State, plugin)
		hist, herr := s.st.History(ctx, scope, 0)
		if herr != nil {
			return SetResult{}, herr
		}
		var prev *pair
		var seq int64
		for _, d := range hist {
			if d.Seq >= cur.Document.Seq {
				continue
			}
			if p := get(d.State, plugin); !p.equal(now) {
				prev, seq = &p, d.Seq
				break
			}
		}
		if prev == nil && now.Version != "" && (len(hist) == 0 || hist[len(hist)-1].Seq == 1) {
			// Before seq 1 the scope had no document, so no version.
			prev = &pair{}
		}
		if prev == nil {
			return SetResult{}, fmt.Errorf("%w: the history of %s has no earlier %s version than %s", ErrNothingToUndo, scope, plugin, now)
		}
		var subst, platforms, warnings []string
		var hosts map[string]int64
		if prev.Version != "" {
			if platforms, err = s.published(ctx, plugin, prev.Version); err != nil {
				return SetResult{}, err
			}
			asked := prev.Version
			// Hosts refuse going back to a lower version unless it is a
			// signed rollback: use the rollback release of that version.
			eff, eerr := s.effectiveAt(ctx, scope, plugin)
			if eerr != nil {
				return SetResult{}, eerr
			}
			var p pair
			if p, subst, err = s.withRollbacks(ctx, plugin, eff, *prev); err != nil {
				return SetResult{}, fmt.Errorf("rollout undo %s: %s -> %s (as of seq %d) refused: %w", plugin, now, *prev, seq, err)
			}
			prev = &p
			if prev.Version != asked {
				if platforms, err = s.published(ctx, plugin, prev.Version); err != nil {
					return SetResult{}, err
				}
			}
		}
		msg := fmt.Sprintf("rollout undo %s: %s -> %s (as of seq %d)", plugin, now, *prev, seq)
		if len(subst) > 0 {
			msg += " (" + strings.Join(subst, ", ") + ")"
		}
		if comment != "" {
			msg += ": " + comment
		}
		st := cur.Document.State
		put(&st, plugin, *prev)
		var guards []clientv3.Cmp
		if prev.Version != "" {
			if platforms, guards, err = s.publishedGuard(ctx, plugin, prev.Version); err != nil {
				return SetResult{}, err
			}
			if guards, err = s.guardFrom(ctx, plugin, *prev, guards); err != nil {
				return SetResult{}, err
			}
			// Judged against the platforms the write is guarded on.
			percent := 0
			if prev.Rollout != nil {
				percent = prev.Rollout.Percent
			}
			if hosts, warnings, err = s.checkPlatforms(ctx, scope, plugin, prev.Version, percent, platforms, r.RequirePlatforms); err != nil {
				return SetResult{}, err
			}
		}
		var res store.Result
		res, err = s.st.Set(ctx, store.Write{Scope: scope, State: st, Author: author, Comment: msg, IfRevision: &cur.Revision, Guards: guards})
		if err == nil {
			return SetResult{Result: res, Plugin: plugin, Version: prev.Version, Rollout: prev.Rollout,
				Previous: now.Version, PreviousRollout: now.Rollout, Comment: msg, Platforms: platforms,
				HostPlatforms: hosts, Warnings: warnings}, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return SetResult{}, err
		}
	}
	return SetResult{}, err
}
