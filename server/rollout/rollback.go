package rollout

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/coreos/go-semver/semver"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/signing"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNeedsRollback: the write would move hosts to a lower version than
// they are asked to run now, and that version is not a signed rollback
// release (hosts refuse such a downgrade). It is an ErrInvalid.
var ErrNeedsRollback = fmt.Errorf("%w: moving hosts to a lower version needs a signed rollback release", ErrInvalid)

// targetOf is the version a host in bucket is asked to run by p ("" when
// p asks nothing of it: no version, or a rollout without From).
func targetOf(p pair, bucket int) string {
	if p.Version == "" {
		return ""
	}
	if p.Rollout == nil || p.Rollout.Percent >= 100 || bucket < p.Rollout.Percent {
		return p.Version
	}
	return p.Rollout.From
}

// downgrade is a version of next that some hosts would move to from the
// higher version above.
type downgrade struct{ version, above string }

// downgrades lists, for every rollout bucket, the versions next asks for
// that are lower (in semver precedence) than what cur asks of the same
// hosts. Build metadata does not count: 1.2.0+rollback.1 is not lower
// than 1.2.0.
func downgrades(cur, next pair) []downgrade {
	seen := map[string]bool{}
	var out []downgrade
	for b := 0; b < 100; b++ {
		c, n := targetOf(cur, b), targetOf(next, b)
		if c == "" || n == "" || seen[n] {
			continue
		}
		cv, err1 := semver.NewVersion(c)
		nv, err2 := semver.NewVersion(n)
		if err1 != nil || err2 != nil {
			continue
		}
		if nv.LessThan(*cv) {
			seen[n] = true
			out = append(out, downgrade{version: n, above: c})
		}
	}
	return out
}

// platformRelease is one platform's parsed manifest of a version.
type platformRelease struct {
	platform string
	sm       signing.SignedManifest
}

// releases reads and parses every platform's published manifest of a
// version (ErrNoRelease when none is published).
func (s *Service) releases(ctx context.Context, plugin, version string) ([]platformRelease, error) {
	ms, err := s.Manifests(ctx, plugin, version)
	if err != nil {
		return nil, err
	}
	out := make([]platformRelease, 0, len(ms))
	for _, m := range ms {
		sm, err := signing.ParseManifest(bytes.NewReader(m.Manifest))
		if err != nil {
			return nil, fmt.Errorf("%w: %s %s for %s is published but does not parse: %v", ErrInvalid, plugin, version,
				api.Platform(m.OS, m.Arch), err)
		}
		out = append(out, platformRelease{platform: api.Platform(m.OS, m.Arch), sm: sm})
	}
	return out, nil
}

// rollbackRelease returns version itself when every platform's published
// manifest of it is a signed rollback, else the newest published rollback
// release of the same precedence (1.2.0+rollback.N: same version, build
// metadata aside; it counts when any platform has a signed rollback
// manifest of it, each platform needs its own), else "" with the guidance
// to make one.
func (s *Service) rollbackRelease(ctx context.Context, plugin string, d downgrade) (string, error) {
	rels, err := s.releases(ctx, plugin, d.version)
	if err != nil {
		return "", err
	}
	all := true
	for _, r := range rels {
		all = all && r.sm.Manifest.Rollback
	}
	if all {
		return d.version, nil
	}
	want := semver.New(d.version)
	prefix := s.ks.Releases() + plugin + "/"
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", prefix, err)
	}
	best, bestRev, next := "", int64(0), 1
	for _, kv := range resp.Kvs {
		p, v, _, _, ok := s.ks.ParseRelease(string(kv.Key))
		if !ok || p != plugin {
			continue
		}
		pv, err := semver.NewVersion(v)
		if err != nil || pv.Compare(*want) != 0 {
			continue
		}
		if n, ok := strings.CutPrefix(string(pv.Metadata), "rollback."); ok {
			if i, err := strconv.Atoi(n); err == nil && i >= next {
				next = i + 1
			}
		}
		other, err := signing.ParseManifest(bytes.NewReader(kv.Value))
		if err != nil || !other.Manifest.Rollback {
			continue
		}
		if kv.ModRevision > bestRev {
			best, bestRev = v, kv.ModRevision
		}
	}
	if best != "" {
		return best, nil
	}
	return "", rollbackGuidance(plugin, d, rels, next)
}

// rollbackGuidance says exactly how to make the missing rollback release:
// one signed rollback manifest per platform d.version is published for.
func rollbackGuidance(plugin string, d downgrade, rels []platformRelease, n int) error {
	base := *semver.New(d.version)
	base.Metadata = ""
	rb := fmt.Sprintf("%s+rollback.%d", base.String(), n)
	cmds := func(m signing.Manifest, dir string) string {
		return fmt.Sprintf("  vigil-sign sign -s RELEASE.key --binary BINARY --plugin %s --version %s --os %s --arch %s --min-host-version %s --rollback --expires 720h %s\n"+
			"  vigil-sign sign -s RELEASE2.key %s     # each further key of the hosts' threshold\n"+
			"  vigilctl release publish %s",
			plugin, rb, m.OS, m.Arch, m.MinHostVersion, dir, dir, dir)
	}
	head := fmt.Sprintf("%s %s would replace %s on some hosts, and hosts refuse a downgrade unless its manifest is a signed rollback; "+
		"no rollback release of %s is published.", plugin, d.version, d.above, d.version)
	if len(rels) == 1 {
		m := rels[0].sm.Manifest
		return fmt.Errorf("%w: %s Publish %s's binary (sha256:%s, GET /v1/artifacts/%s) again as a signed rollback, then run this again:\n%s",
			ErrNeedsRollback, head, d.version, m.SHA256, m.SHA256, cmds(m, "rollback-bundle/"))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s Publish the binary of every platform of %s again as a signed rollback (each platform needs its own rollback manifest), then run this again:",
		head, d.version)
	for _, r := range rels {
		m := r.sm.Manifest
		fmt.Fprintf(&b, "\n  # %s: BINARY is sha256:%s (GET /v1/artifacts/%s)\n%s", r.platform, m.SHA256, m.SHA256,
			cmds(m, "rollback-bundle-"+m.OS+"-"+m.Arch+"/"))
	}
	return fmt.Errorf("%w: %s", ErrNeedsRollback, b.String())
}

// withRollbacks replaces in next every version that would move hosts down
// from cur by its signed rollback release (see rollbackRelease); subst
// says what was replaced, for the history comment.
func (s *Service) withRollbacks(ctx context.Context, plugin string, cur, next pair) (pair, []string, error) {
	var subst []string
	for _, d := range downgrades(cur, next) {
		rb, err := s.rollbackRelease(ctx, plugin, d)
		if err != nil {
			return pair{}, nil, err
		}
		if rb == d.version {
			continue
		}
		subst = append(subst, fmt.Sprintf("%s as its signed rollback release %s", d.version, rb))
		if next.Version == d.version {
			next.Version = rb
		}
		if next.Rollout != nil && next.Rollout.From == d.version {
			r := *next.Rollout
			r.From = rb
			next.Rollout = &r
		}
	}
	return next, subst, nil
}
