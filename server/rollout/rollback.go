package rollout

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/coreos/go-semver/semver"
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

// release reads and parses one published manifest.
func (s *Service) release(ctx context.Context, plugin, version string) (signing.SignedManifest, error) {
	raw, err := s.Manifest(ctx, plugin, version)
	if err != nil {
		return signing.SignedManifest{}, err
	}
	sm, err := signing.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return signing.SignedManifest{}, fmt.Errorf("%w: %s %s is published but does not parse: %v", ErrInvalid, plugin, version, err)
	}
	return sm, nil
}

// rollbackRelease returns version itself when its published manifest is
// a signed rollback, else the newest published rollback release of the
// same precedence (1.2.0+rollback.N: same version, build metadata aside),
// else "" with the guidance to make one.
func (s *Service) rollbackRelease(ctx context.Context, plugin string, d downgrade) (string, error) {
	sm, err := s.release(ctx, plugin, d.version)
	if err != nil {
		return "", err
	}
	if sm.Manifest.Rollback {
		return d.version, nil
	}
	want := semver.New(d.version)
	key := s.ks.Release(plugin, "")
	resp, err := s.cli.Get(ctx, key, clientv3.WithPrefix())
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", key, err)
	}
	best, bestRev, next := "", int64(0), 1
	for _, kv := range resp.Kvs {
		v := string(kv.Key[len(key):])
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
	return "", rollbackGuidance(plugin, d, sm.Manifest, next)
}

// rollbackGuidance says exactly how to make the missing rollback release.
func rollbackGuidance(plugin string, d downgrade, m signing.Manifest, n int) error {
	base := *semver.New(d.version)
	base.Metadata = ""
	rb := fmt.Sprintf("%s+rollback.%d", base.String(), n)
	return fmt.Errorf("%w: %s %s would replace %s on some hosts, and hosts refuse a downgrade unless its manifest is a signed rollback; "+
		"no rollback release of %s is published. Publish %s's binary (sha256:%s, GET /v1/artifacts/%s) again as a signed rollback, then run this again:\n"+
		"  vigil-sign sign -s RELEASE.key --binary BINARY --plugin %s --version %s --os %s --arch %s --min-host-version %s --rollback --expires 720h rollback-bundle/\n"+
		"  vigil-sign sign -s RELEASE2.key rollback-bundle/     # each further key of the hosts' threshold\n"+
		"  vigilctl release publish rollback-bundle/",
		ErrNeedsRollback, plugin, d.version, d.above, d.version, d.version, m.SHA256, m.SHA256,
		plugin, rb, m.OS, m.Arch, m.MinHostVersion)
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
