package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/coreos/go-semver/semver"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/store"
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
}

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
// result names the platforms it is published for.
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
		var res store.Result
		res, err = s.st.Set(ctx, store.Write{Scope: r.Scope, State: st, Author: r.Author, Comment: comment, IfRevision: &cur.Revision})
		if err == nil {
			return SetResult{Result: res, Plugin: r.Plugin, Version: next.Version, Rollout: next.Rollout,
				Previous: prev.Version, PreviousRollout: prev.Rollout, Comment: comment, Platforms: platforms}, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return SetResult{}, err
		}
	}
	return SetResult{}, err
}

// Undo restores plugin's previous desired version and rollout at scope:
// the newest history record whose pair differs from the current one (or
// none, if the scope's first document introduced the version). Only
// that pair changes; the rest of the current document stays. It is a new
// versioned write, so a second undo returns to where the first started.
func (s *Service) Undo(ctx context.Context, scope api.Scope, plugin, author, comment string) (SetResult, error) {
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
		var subst, platforms []string
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
		var res store.Result
		res, err = s.st.Set(ctx, store.Write{Scope: scope, State: st, Author: author, Comment: msg, IfRevision: &cur.Revision})
		if err == nil {
			return SetResult{Result: res, Plugin: plugin, Version: prev.Version, Rollout: prev.Rollout,
				Previous: now.Version, PreviousRollout: now.Rollout, Comment: msg, Platforms: platforms}, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return SetResult{}, err
		}
	}
	return SetResult{}, err
}
