// Package rollout is the server side of releases: it writes signed release
// manifests to /hids/releases/{plugin}/{version}/{os}/{arch} exactly as they
// were signed (one version, one manifest per platform), lists them,
// removes them (keeping a record of who, when, why and what; remove.go)
// and collects the artifacts no manifest names, moves a plugin's (or
// vigil-host's) desired version at a scope, optionally for a stable
// percentage of hosts, through the store's versioned, history-keeping
// writes, undoes such a move from history, and aggregates what hosts
// report of an update. The server is a mirror: it never signs, and hosts
// verify every manifest and binary themselves.
package rollout

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/coreos/go-semver/semver"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/registry"
	"github.com/vigil-hids/vigil/server/store"
	"github.com/vigil-hids/vigil/signing"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Refusals, compared with errors.Is.
var (
	// ErrReleaseExists: another manifest is published under the same
	// plugin, version and platform; a version names one binary per
	// platform forever.
	ErrReleaseExists = errors.New("rollout: release already published with other content")
	// ErrNoRelease: no manifest is published for that plugin and version
	// (on any platform, or on the platform asked for).
	ErrNoRelease = errors.New("rollout: no such release")
	// ErrInvalid: the request itself is wrong (name, version, percent).
	ErrInvalid = errors.New("rollout: invalid request")
	// ErrNothingToUndo: the scope's history has no earlier version.
	ErrNothingToUndo = errors.New("rollout: nothing to undo")
)

// Options configures a Service.
type Options struct {
	Store *store.Store
	// Index, if set, answers Status from memory while it is synced.
	Index *registry.Index
}

// Service publishes releases and moves desired versions.
type Service struct {
	st  *store.Store
	cli *clientv3.Client
	ks  api.Keyspace
	x   *registry.Index
}

// New returns a Service over opts.Store's etcd.
func New(opts Options) *Service {
	return &Service{st: opts.Store, cli: opts.Store.Client(), ks: opts.Store.Keyspace(), x: opts.Index}
}

// Release is a published release as listed.
type Release struct {
	Plugin         string    `json:"plugin"`
	Version        string    `json:"version"`
	OS             string    `json:"os"`
	Arch           string    `json:"arch"`
	Length         int64     `json:"length"`
	SHA256         string    `json:"sha256"`
	Expires        time.Time `json:"expires"`
	MinHostVersion string    `json:"min_host_version"`
	Rollback       bool      `json:"rollback,omitempty"`
	// Signers are the key ids of the manifest's signatures (not verified
	// here: hosts verify).
	Signers []string `json:"signers"`
	// Revision is the etcd mod revision of the release key.
	Revision int64 `json:"revision"`
	// Result says what Publish did: "created", "unchanged", "updated"
	// (the same manifest with signatures added), or "restored" (a removed
	// release published again with the manifest that was removed).
	Result string `json:"result,omitempty"`
}

func releaseOf(s signing.SignedManifest, rev int64) Release {
	m := s.Manifest
	r := Release{Plugin: m.Plugin, Version: m.Version, OS: m.OS, Arch: m.Arch, Length: m.Length, SHA256: m.SHA256,
		Expires: m.Expires, MinHostVersion: m.MinHostVersion, Rollback: m.Rollback, Revision: rev, Signers: []string{}}
	for _, sig := range s.Signatures {
		r.Signers = append(r.Signers, sig.KeyID)
	}
	return r
}

// Publish writes raw, the signed manifest s as uploaded, to
// /hids/releases/{plugin}/{version}/{os}/{arch} (the manifest's platform),
// byte for byte. Publishing the same bytes again changes nothing; the same
// manifest with more signatures (a second key signed after the first
// publish) replaces it; anything else under an existing version and
// platform is ErrReleaseExists. Another platform of a published version is
// a publish like any other. A removed release (Remove) is published again
// ("restored") only with the manifest that was removed: a version names one
// binary per platform forever. The artifact must be stored before: a host
// that sees the key may download at once.
func (s *Service) Publish(ctx context.Context, raw []byte, sm signing.SignedManifest) (Release, error) {
	key := s.keyOf(sm.Manifest)
	if err := s.ownArtifact(ctx, sm.Manifest); err != nil {
		return Release{}, err
	}
	recKey := s.ks.RemovedRelease(sm.Manifest.Plugin, sm.Manifest.Version, sm.Manifest.OS, sm.Manifest.Arch)
	for attempt := 0; attempt < 5; attempt++ {
		// A removed release (remove.go) is published again only with the
		// manifest that was removed, which deletes the removal record.
		rm, recRev, err := s.removal(ctx, sm.Manifest)
		if err != nil {
			return Release{}, err
		}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
			clientv3.Compare(clientv3.ModRevision(recKey), "=", recRev)}
		ops := []clientv3.Op{clientv3.OpPut(key, string(raw))}
		result := "created"
		if rm != nil {
			if err := restorable(rm, sm); err != nil {
				return Release{}, err
			}
			ops = append(ops, clientv3.OpDelete(recKey))
			result = "restored"
		}
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			return Release{}, fmt.Errorf("writing %s: %w", key, err)
		}
		if resp.Succeeded {
			r := releaseOf(sm, resp.Header.Revision)
			r.Result = result
			return r, nil
		}
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			continue // deleted meanwhile
		}
		old := kvs[0]
		same, err := compare(old.Value, raw, sm)
		if err != nil {
			return Release{}, err
		}
		if same {
			r := releaseOf(sm, old.ModRevision)
			r.Result = "unchanged"
			return r, nil
		}
		tx, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", old.ModRevision)).
			Then(clientv3.OpPut(key, string(raw))).
			Commit()
		if err != nil {
			return Release{}, fmt.Errorf("writing %s: %w", key, err)
		}
		if tx.Succeeded {
			r := releaseOf(sm, tx.Header.Revision)
			r.Result = "updated"
			return r, nil
		}
	}
	return Release{}, fmt.Errorf("%w: %s kept changing while publishing; retry", store.ErrConflict, key)
}

// CanPublish checks, before any binary is received, that Publish would
// not refuse sm because another manifest holds its version and platform.
func (s *Service) CanPublish(ctx context.Context, raw []byte, sm signing.SignedManifest) error {
	key := s.keyOf(sm.Manifest)
	if err := s.ownArtifact(ctx, sm.Manifest); err != nil {
		return err
	}
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("reading %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		rm, _, err := s.removal(ctx, sm.Manifest)
		if err != nil || rm == nil {
			return err
		}
		return restorable(rm, sm)
	}
	_, err = compare(resp.Kvs[0].Value, raw, sm)
	return err
}

// keyOf is the release key of m's plugin, version and platform.
func (s *Service) keyOf(m signing.Manifest) string {
	return s.ks.Release(m.Plugin, m.Version, m.OS, m.Arch)
}

// ownArtifact refuses (ErrInvalid) a manifest whose binary another platform
// of the same version names: one build signed for two platforms is a
// mistake hosts would only find when the binary fails to start. A courtesy
// check, like the rest: hosts verify on their own.
func (s *Service) ownArtifact(ctx context.Context, m signing.Manifest) error {
	prefix := s.ks.ReleaseVersion(m.Plugin, m.Version)
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("reading %s: %w", prefix, err)
	}
	for _, kv := range resp.Kvs {
		p, v, os, arch, ok := s.ks.ParseRelease(string(kv.Key))
		if !ok || p != m.Plugin || v != m.Version || (os == m.OS && arch == m.Arch) {
			continue
		}
		other, err := signing.ParseManifest(bytes.NewReader(kv.Value))
		if err == nil && other.Manifest.SHA256 == m.SHA256 {
			return fmt.Errorf("%w: %s %s for %s names the binary sha256:%s, which its %s manifest names too; each platform needs its own build",
				ErrInvalid, m.Plugin, m.Version, api.Platform(m.OS, m.Arch), m.SHA256, api.Platform(os, arch))
		}
	}
	return nil
}

// compare decides whether raw (parsed as sm) may stand where old is
// published: the same bytes (same is true), or the same manifest with
// every old signature and more (same is false); anything else is
// ErrReleaseExists.
func compare(old, raw []byte, sm signing.SignedManifest) (same bool, err error) {
	name := sm.Manifest.Plugin + " " + sm.Manifest.Version + " for " + api.Platform(sm.Manifest.OS, sm.Manifest.Arch)
	if bytes.Equal(old, raw) {
		return true, nil
	}
	prev, err := signing.ParseManifest(bytes.NewReader(old))
	if err != nil {
		return false, fmt.Errorf("%w: %s is published but does not parse (%v); refusing to replace it", ErrReleaseExists, name, err)
	}
	if !sameBody(prev.Manifest, sm.Manifest) {
		return false, fmt.Errorf("%w: %s is published with sha256:%s, length %d; a version names one binary per platform forever, publish a new version",
			ErrReleaseExists, name, prev.Manifest.SHA256, prev.Manifest.Length)
	}
	if missing := missingSigners(prev, sm); len(missing) > 0 {
		return false, fmt.Errorf("%w: %s is published with signatures by %v that the new upload lacks; signatures are only ever added",
			ErrReleaseExists, name, missing)
	}
	return false, nil
}

func sameBody(a, b signing.Manifest) bool {
	x, err1 := a.Body()
	y, err2 := b.Body()
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

func missingSigners(old, new signing.SignedManifest) []string {
	have := map[string]bool{}
	for _, s := range new.Signatures {
		have[s.KeyID] = true
	}
	var out []string
	for _, s := range old.Signatures {
		if !have[s.KeyID] {
			out = append(out, s.KeyID)
		}
	}
	return out
}

// Manifest returns the signed manifest of one platform of a release as
// published.
func (s *Service) Manifest(ctx context.Context, plugin, version, os, arch string) ([]byte, error) {
	if err := checkKey(plugin, version, os, arch); err != nil {
		return nil, err
	}
	key := s.ks.Release(plugin, version, os, arch)
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		platforms, err := s.published(ctx, plugin, version)
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %s %s is not published for %s (%s); published for: %s", ErrNoRelease, plugin, version,
			api.Platform(os, arch), key, strings.Join(platforms, ", "))
	}
	return resp.Kvs[0].Value, nil
}

// PlatformManifest is one platform's signed manifest of a version.
type PlatformManifest struct {
	OS   string `json:"os"`
	Arch string `json:"arch"`
	// Manifest is the manifest as published (compacted when sent as JSON;
	// GET /v1/releases/{plugin}/{version}?os=&arch= serves it byte for
	// byte).
	Manifest json.RawMessage `json:"manifest"`
	// Revision is the etcd mod revision of its key.
	Revision int64 `json:"revision"`
}

// Manifests returns the signed manifests of every platform of a version,
// sorted by platform; ErrNoRelease when none is published.
func (s *Service) Manifests(ctx context.Context, plugin, version string) ([]PlatformManifest, error) {
	if err := checkKey(plugin, version, "os", "arch"); err != nil {
		return nil, err
	}
	prefix := s.ks.ReleaseVersion(plugin, version)
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", prefix, err)
	}
	out := []PlatformManifest{}
	for _, kv := range resp.Kvs {
		p, v, os, arch, ok := s.ks.ParseRelease(string(kv.Key))
		if !ok || p != plugin || v != version {
			continue
		}
		out = append(out, PlatformManifest{OS: os, Arch: arch, Manifest: kv.Value, Revision: kv.ModRevision})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s %s is not published on any platform (%s)", ErrNoRelease, plugin, version, prefix)
	}
	return out, nil
}

// Releases lists the published releases of plugin ("" for every plugin),
// one row per platform, sorted by plugin, then by semver, then platform.
func (s *Service) Releases(ctx context.Context, plugin string) ([]Release, error) {
	resp, err := s.listPlugin(ctx, s.ks.Releases(), plugin)
	if err != nil {
		return nil, err
	}
	out := make([]Release, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		// Someone wrote etcd directly, or a manifest sits at the key of
		// a single-platform release (/hids/releases/{plugin}/{version},
		// before multi-platform releases) that hosts no longer read:
		// show it rather than hide it.
		p, v, os, arch, ok := s.ks.ParseRelease(string(kv.Key))
		if !ok {
			out = append(out, Release{Plugin: string(kv.Key[len(s.ks.Releases()):]),
				Version:  "(not a release key {plugin}/{version}/{os}/{arch}: hosts do not read it; publish the bundle again)",
				Revision: kv.ModRevision, Signers: []string{}})
			continue
		}
		sm, err := signing.ParseManifest(bytes.NewReader(kv.Value))
		if err != nil {
			out = append(out, Release{Plugin: p, Version: v + " (unreadable: " + err.Error() + ")", OS: os, Arch: arch,
				Revision: kv.ModRevision, Signers: []string{}})
			continue
		}
		r := releaseOf(sm, kv.ModRevision)
		if r.Plugin != p || r.Version != v || r.OS != os || r.Arch != arch {
			r.Version += fmt.Sprintf(" (at the key of %s %s %s: hosts refuse it)", p, v, api.Platform(os, arch))
		}
		out = append(out, r)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Plugin != out[j].Plugin {
			return out[i].Plugin < out[j].Plugin
		}
		if out[i].Version != out[j].Version {
			a, errA := semver.NewVersion(out[i].Version)
			b, errB := semver.NewVersion(out[j].Version)
			if errA != nil || errB != nil {
				return out[i].Version < out[j].Version
			}
			return a.LessThan(*b)
		}
		return api.Platform(out[i].OS, out[i].Arch) < api.Platform(out[j].OS, out[j].Arch)
	})
	return out, nil
}

// checkKey checks the parts of a release key asked for by name: a release
// name, and a version, os and arch that are one key segment each.
func checkKey(plugin, version, os, arch string) error {
	if err := checkRelease(plugin); err != nil {
		return err
	}
	for _, p := range [][2]string{{"version", version}, {"os", os}, {"arch", arch}} {
		if p[1] == "" || strings.ContainsAny(p[1], "/\x00") {
			return fmt.Errorf("%w: %s %q is not one key segment", ErrInvalid, p[0], p[1])
		}
	}
	return nil
}

// checkRelease checks a release name: a plugin name or vigil-host.
func checkRelease(name string) error {
	if name == api.HostReleaseName || api.ValidName(name) {
		return nil
	}
	return fmt.Errorf("%w: %q is not a plugin name", ErrInvalid, name)
}

// published returns the platforms ("os/arch", sorted) a version is
// published for, reading only keys; ErrNoRelease when it is published for
// none.
func (s *Service) published(ctx context.Context, plugin, version string) ([]string, error) {
	platforms, _, err := s.publishedGuard(ctx, plugin, version)
	return platforms, err
}

// publishedGuard is published, with the compares that hold while every
// manifest read is unchanged: a desired-state write that names the version
// carries them, so it cannot land after a concurrent `release rm` of it.
func (s *Service) publishedGuard(ctx context.Context, plugin, version string) ([]string, []clientv3.Cmp, error) {
	prefix := s.ks.ReleaseVersion(plugin, version)
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", prefix, err)
	}
	platforms := []string{}
	var guards []clientv3.Cmp
	for _, kv := range resp.Kvs {
		if p, v, os, arch, ok := s.ks.ParseRelease(string(kv.Key)); ok && p == plugin && v == version {
			platforms = append(platforms, api.Platform(os, arch))
			guards = append(guards, clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision))
		}
	}
	if len(platforms) == 0 {
		return nil, nil, fmt.Errorf("%w: %s %s is not published on any platform (vigilctl release publish, then vigilctl release ls %s)",
			ErrNoRelease, plugin, version, plugin)
	}
	return platforms, guards, nil
}

// listPlugin reads every key under base, or only plugin's ("" for every
// plugin).
func (s *Service) listPlugin(ctx context.Context, base, plugin string) (*clientv3.GetResponse, error) {
	prefix := base
	if plugin != "" {
		if err := checkRelease(plugin); err != nil {
			return nil, err
		}
		prefix += plugin + "/"
	}
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", prefix, err)
	}
	return resp, nil
}
