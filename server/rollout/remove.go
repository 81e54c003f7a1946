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
	"github.com/vigil-hids/vigil/server/artifacts"
	"github.com/vigil-hids/vigil/server/store"
	"github.com/vigil-hids/vigil/signing"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrInUse: a desired-state document still asks for the release that is
// to be removed; move the scopes off it first.
var ErrInUse = errors.New("rollout: release in use")

// RemoveRequest removes a published release: one platform of a version,
// or every platform of it when OS and Arch are empty.
type RemoveRequest struct {
	Plugin  string
	Version string
	OS      string
	Arch    string
	Author  string
	Comment string
}

// Removal is the record of a removed release manifest, kept at
// /hids/releases-removed/{plugin}/{version}/{os}/{arch}. It remembers the
// manifest, so the version cannot be published again with another binary.
type Removal struct {
	Plugin    string    `json:"plugin"`
	Version   string    `json:"version"`
	OS        string    `json:"os"`
	Arch      string    `json:"arch"`
	SHA256    string    `json:"sha256"`
	Length    int64     `json:"length"`
	RemovedBy string    `json:"removed_by"`
	RemovedAt time.Time `json:"removed_at"`
	Comment   string    `json:"comment"`
	// ManifestRevision is the mod revision the manifest key had when it
	// was removed; Revision is the etcd revision of the removal.
	ManifestRevision int64 `json:"manifest_revision"`
	Revision         int64 `json:"revision"`
	// Manifest is the removed manifest, byte for byte (base64 in JSON).
	Manifest []byte `json:"manifest"`
}

// Remove deletes the manifests of a release from /hids/releases/ (so hosts
// no longer find it) and records who removed which manifest, when and why
// under /hids/releases-removed/, in one etcd transaction guarded by the
// manifests' mod revisions and by the desired-state documents read: it is
// refused (ErrInUse, naming the scopes) while any document (fleet, group or
// host) asks for the version, as its version or as the "from" of a partial
// rollout. Of two concurrent removals one wins; the other finds nothing
// to remove (ErrNoRelease). The artifact stays in the store until
// CollectArtifacts finds no manifest naming it.
func (s *Service) Remove(ctx context.Context, req RemoveRequest) ([]Removal, error) {
	if req.OS == "" && req.Arch == "" {
		if err := checkKey(req.Plugin, req.Version, "os", "arch"); err != nil {
			return nil, err
		}
	} else if err := checkKey(req.Plugin, req.Version, req.OS, req.Arch); err != nil {
		return nil, err
	}
	if strings.TrimSpace(req.Comment) == "" {
		return nil, fmt.Errorf("%w: removing %s %s needs a comment saying why (--comment)", ErrInvalid, req.Plugin, req.Version)
	}
	name := req.Plugin + " " + req.Version
	if req.OS != "" {
		name += " for " + api.Platform(req.OS, req.Arch)
	}
	prefix := s.ks.ReleaseVersion(req.Plugin, req.Version)
	for attempt := 0; attempt < 5; attempt++ {
		resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", prefix, err)
		}
		rev := resp.Header.Revision
		var kvs []*keyValue
		var platforms []string
		for _, kv := range resp.Kvs {
			p, v, os, arch, ok := s.ks.ParseRelease(string(kv.Key))
			if !ok || p != req.Plugin || v != req.Version {
				continue
			}
			platforms = append(platforms, api.Platform(os, arch))
			if req.OS == "" || (os == req.OS && arch == req.Arch) {
				kvs = append(kvs, &keyValue{key: string(kv.Key), value: kv.Value, modRev: kv.ModRevision, os: os, arch: arch})
			}
		}
		if len(kvs) == 0 {
			if len(platforms) == 0 {
				return nil, fmt.Errorf("%w: %s is not published on any platform (%s); vigilctl release ls --removed %s shows removed releases",
					ErrNoRelease, req.Plugin+" "+req.Version, prefix, req.Plugin)
			}
			return nil, fmt.Errorf("%w: %s is not published; published for: %s", ErrNoRelease, name, strings.Join(platforms, ", "))
		}
		users, err := s.askedFor(ctx, req.Plugin, req.Version, rev)
		if err != nil {
			return nil, err
		}
		if len(users) > 0 {
			docs := "desired-state document"
			if len(users) > 1 {
				docs = fmt.Sprintf("%d desired-state documents", len(users))
			}
			return nil, fmt.Errorf("%w: %s is still asked for by the %s %s; move them off it first (vigilctl rollout set %s VERSION --scope SCOPE), then remove it",
				ErrInUse, req.Plugin+" "+req.Version, docs, strings.Join(users, "; "), req.Plugin)
		}
		now := time.Now().UTC()
		cmps := []clientv3.Cmp{
			// No desired-state document was written since they were read.
			clientv3.Compare(clientv3.ModRevision(s.ks.Configs()), "<", rev+1).WithPrefix(),
		}
		var ops []clientv3.Op
		out := make([]Removal, 0, len(kvs))
		for _, kv := range kvs {
			rm := Removal{Plugin: req.Plugin, Version: req.Version, OS: kv.os, Arch: kv.arch, RemovedBy: req.Author,
				RemovedAt: now, Comment: req.Comment, ManifestRevision: kv.modRev, Manifest: kv.value}
			if sm, err := signing.ParseManifest(bytes.NewReader(kv.value)); err == nil {
				rm.SHA256, rm.Length = sm.Manifest.SHA256, sm.Manifest.Length
			}
			out = append(out, rm)
		}
		for i, kv := range kvs {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(kv.key), "=", kv.modRev))
			ops = append(ops, clientv3.OpDelete(kv.key))
			b, err := json.Marshal(out[i])
			if err != nil {
				return nil, err
			}
			ops = append(ops, clientv3.OpPut(s.ks.RemovedRelease(req.Plugin, req.Version, kv.os, kv.arch), string(b)))
		}
		tx, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("removing %s: %w", name, err)
		}
		if tx.Succeeded {
			for i := range out {
				out[i].Revision = tx.Header.Revision
			}
			return out, nil
		}
		// A manifest or a document changed meanwhile: judge again.
	}
	return nil, fmt.Errorf("%w: %s or the desired-state documents kept changing while removing it; retry", store.ErrConflict, name)
}

type keyValue struct {
	key      string
	value    []byte
	modRev   int64
	os, arch string
}

// askedFor names the desired-state documents (as of rev) that ask for
// release's version, with how: "fleet (version)", "group:env=canary
// (rollout from)". A document that does not decode counts, since what it
// asks for cannot be told.
func (s *Service) askedFor(ctx context.Context, release, version string, rev int64) ([]string, error) {
	prefix := s.ks.Configs()
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", prefix, err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		var doc api.Document
		if err := json.Unmarshal(kv.Value, &doc); err != nil {
			out = append(out, fmt.Sprintf("%s (does not decode: %v)", kv.Key, err))
			continue
		}
		scope := doc.Scope
		if scope == "" {
			scope = string(kv.Key)
		}
		p := get(doc.State, release)
		var how []string
		if p.Version == version {
			how = append(how, "version")
		}
		if p.Rollout != nil && p.Rollout.From == version {
			how = append(how, "rollout from")
		}
		if len(how) > 0 {
			out = append(out, scope+" ("+strings.Join(how, ", ")+")")
		}
	}
	sort.Strings(out)
	return out, nil
}

// removal reads the removal record of m's plugin, version and platform:
// nil and 0 when there is none.
func (s *Service) removal(ctx context.Context, m signing.Manifest) (*Removal, int64, error) {
	key := s.ks.RemovedRelease(m.Plugin, m.Version, m.OS, m.Arch)
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return nil, 0, fmt.Errorf("reading %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	var rm Removal
	if err := json.Unmarshal(resp.Kvs[0].Value, &rm); err != nil {
		return nil, 0, fmt.Errorf("%w: %s %s for %s was removed, but its record %s does not decode (%v); refusing to publish it again",
			ErrReleaseExists, m.Plugin, m.Version, api.Platform(m.OS, m.Arch), key, err)
	}
	return &rm, resp.Kvs[0].ModRevision, nil
}

// restorable checks that sm, published again, is the manifest rm removed
// (the same binary and fields; signatures may differ): a version names one
// binary per platform forever, even after its removal.
func restorable(rm *Removal, sm signing.SignedManifest) error {
	m := sm.Manifest
	if prev, err := signing.ParseManifest(bytes.NewReader(rm.Manifest)); err == nil && sameBody(prev.Manifest, m) {
		return nil
	}
	return fmt.Errorf("%w: %s %s for %s was published with sha256:%s, length %d, and removed by %s at %s (%q); a version names one binary per platform forever, even removed: publish a new version (or the removed manifest again to restore it)",
		ErrReleaseExists, m.Plugin, m.Version, api.Platform(m.OS, m.Arch), rm.SHA256, rm.Length, rm.RemovedBy,
		rm.RemovedAt.Format(time.RFC3339), rm.Comment)
}

// Removed lists the removal records of plugin ("" for every plugin),
// sorted by plugin, semver, then platform.
func (s *Service) Removed(ctx context.Context, plugin string) ([]Removal, error) {
	resp, err := s.listPlugin(ctx, s.ks.RemovedReleases(), plugin)
	if err != nil {
		return nil, err
	}
	out := make([]Removal, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var rm Removal
		if err := json.Unmarshal(kv.Value, &rm); err != nil {
			rm = Removal{Plugin: strings.TrimPrefix(string(kv.Key), s.ks.RemovedReleases()),
				Comment: fmt.Sprintf("(record does not decode: %v)", err)}
		}
		rm.Revision = kv.ModRevision
		out = append(out, rm)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Plugin != b.Plugin {
			return a.Plugin < b.Plugin
		}
		if a.Version != b.Version {
			va, errA := semver.NewVersion(a.Version)
			vb, errB := semver.NewVersion(b.Version)
			if errA != nil || errB != nil {
				return a.Version < b.Version
			}
			return va.LessThan(*vb)
		}
		return api.Platform(a.OS, a.Arch) < api.Platform(b.OS, b.Arch)
	})
	return out, nil
}

// Named returns the set of sha256s the manifests under /hids/releases/
// name. A manifest that does not parse keeps every sha256 that occurs in
// it. Removal records are not read: the artifact of a removed release may
// be collected (a compromised binary should leave the mirror too).
func (s *Service) Named(ctx context.Context) (map[string]bool, error) {
	prefix := s.ks.Releases()
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", prefix, err)
	}
	named := map[string]bool{}
	for _, kv := range resp.Kvs {
		if sm, err := signing.ParseManifest(bytes.NewReader(kv.Value)); err == nil {
			named[sm.Manifest.SHA256] = true
			continue
		}
		for _, d := range artifacts.Digests(kv.Value) {
			named[d] = true
		}
	}
	return named, nil
}

// CollectArtifacts removes from st the artifacts that no manifest under
// /hids/releases/ names and that are older than grace (zero:
// artifacts.DefaultGrace). The manifests are read before the files are
// looked at, and publishing stores (or renews) an artifact before it writes
// its manifest, so a publish in flight keeps its file as long as it takes
// less than the grace period.
func (s *Service) CollectArtifacts(ctx context.Context, st *artifacts.Store, grace time.Duration, dryRun bool) (artifacts.GCReport, error) {
	opts := artifacts.GCOptions{Grace: grace, DryRun: dryRun, Named: func(string) bool { return true }}
	if err := opts.Validate(); err != nil {
		return artifacts.GCReport{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	named, err := s.Named(ctx)
	if err != nil {
		return artifacts.GCReport{}, err
	}
	opts.Named = func(sha string) bool { return named[sha] }
	return st.Collect(opts)
}
