package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/artifacts"
	"github.com/vigil-hids/vigil/server/auth"
	"github.com/vigil-hids/vigil/server/rollout"
	"github.com/vigil-hids/vigil/signing"
)

// ReleaseOptions configures the release, artifact and rollout routes.
type ReleaseOptions struct {
	Artifacts *artifacts.Store
	Rollout   *rollout.Service
	// Trust, if set, is a courtesy check of uploaded manifests: a release
	// its keys do not sign is refused at publish time. It is not security;
	// hosts verify every release against their own pinned keys.
	Trust *signing.Trust
	// Now is the clock of that check; nil means time.Now.
	Now func() time.Time
}

// Multipart part names of POST /v1/releases, in this order.
const (
	PartManifest = "manifest"
	PartBinary   = "binary"
)

// maxManifestPart bounds the manifest part (signing reads at most 1 MiB).
const maxManifestPart = 1 << 20

// PublishResult is the body of a successful POST /v1/releases.
type PublishResult struct {
	Release  rollout.Release `json:"release"`
	Artifact artifacts.Info  `json:"artifact"`
}

// releaseRoutes registers the release routes when opts.Releases is set.
func (h *handler) releaseRoutes() {
	if h.opts.Releases == nil {
		return
	}
	if h.opts.Releases.Now == nil {
		h.opts.Releases.Now = time.Now
	}
	h.mux.HandleFunc("POST /v1/releases", h.publish)
	h.mux.HandleFunc("GET /v1/releases", h.releases)
	h.mux.HandleFunc("GET /v1/releases/{plugin}/{version}", h.manifest)
	h.mux.HandleFunc("GET /v1/artifacts/{sha256}", h.artifact)
	h.mux.HandleFunc("POST /v1/rollouts/{plugin}", h.rolloutSet)
	h.mux.HandleFunc("POST /v1/rollouts/{plugin}/undo", h.rolloutUndo)
	h.mux.HandleFunc("GET /v1/rollouts/{plugin}/status", h.rolloutStatus)
	h.removeRoutes()
}

// allowRelease checks a release action; key names what is touched.
func (h *handler) allowRelease(r *http.Request, action auth.Action, key string) (auth.Identity, error) {
	id, _ := auth.From(r.Context())
	return id, id.Allow(action, api.Scope{}, key)
}

// failRelease maps the release refusals to codes, then defers to fail.
func (h *handler) failRelease(w http.ResponseWriter, r *http.Request, err error) {
	var mbe *http.MaxBytesError
	code, status := "", 0
	switch {
	case errors.Is(err, artifacts.ErrTooLarge), errors.As(err, &mbe):
		code, status = "too_large", http.StatusRequestEntityTooLarge
	case errors.Is(err, artifacts.ErrMismatch), errors.Is(err, artifacts.ErrInvalidDigest),
		errors.Is(err, rollout.ErrInvalid), errors.Is(err, rollout.ErrNothingToUndo), isSigning(err):
		code, status = "invalid", http.StatusBadRequest
	case errors.Is(err, rollout.ErrReleaseExists), errors.Is(err, rollout.ErrInUse):
		code, status = "conflict", http.StatusConflict
	case errors.Is(err, artifacts.ErrNotFound), errors.Is(err, rollout.ErrNoRelease):
		code, status = "not_found", http.StatusNotFound
	default:
		h.fail(w, r, err)
		return
	}
	h.refuse(w, r, status, code, err)
}

func isSigning(err error) bool {
	for _, e := range []error{signing.ErrMalformed, signing.ErrNoSignature, signing.ErrBadSignature, signing.ErrThreshold,
		signing.ErrExpired} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// publish reads a multipart body: the manifest part, then the binary part,
// streamed into the artifact store (checked against the manifest's length
// and sha256 as it arrives, never held in memory), then the manifest bytes
// are written unchanged to etcd.
func (h *handler) publish(w http.ResponseWriter, r *http.Request) {
	ro := h.opts.Releases
	id, err := h.allowRelease(r, auth.Publish, h.opts.Store.Keyspace().Releases())
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "multipart/form-data" {
		h.failRelease(w, r, badRequest("publish wants multipart/form-data with a %q part, then a %q part (got Content-Type %q)",
			PartManifest, PartBinary, r.Header.Get("Content-Type")))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, ro.Artifacts.MaxBytes()+maxManifestPart+64<<10)
	mr, err := r.MultipartReader()
	if err != nil {
		h.failRelease(w, r, badRequest("reading the upload: %v", err))
		return
	}
	part, err := mr.NextPart()
	if err != nil || part.FormName() != PartManifest {
		h.failRelease(w, r, badRequest("the first part must be %q: %v", PartManifest, partErr(part, err)))
		return
	}
	raw, err := io.ReadAll(io.LimitReader(part, maxManifestPart+1))
	if err != nil {
		h.failRelease(w, r, badRequest("reading the manifest part: %v", err))
		return
	}
	sm, err := signing.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	m := sm.Manifest
	if ro.Trust != nil {
		if _, err := signing.VerifyManifest(sm, *ro.Trust, signing.Expect{Now: ro.Now()}); err != nil {
			h.failRelease(w, r, fmt.Errorf("the server's trust file refuses it (a courtesy check; hosts verify on their own): %w", err))
			return
		}
	}
	if err := ro.Rollout.CanPublish(r.Context(), raw, sm); err != nil {
		h.failRelease(w, r, err)
		return
	}
	part, err = mr.NextPart()
	if err != nil || part.FormName() != PartBinary {
		h.failRelease(w, r, badRequest("the second part must be %q: %v", PartBinary, partErr(part, err)))
		return
	}
	info, err := ro.Artifacts.Put(part, m.SHA256, m.Length)
	if err != nil {
		h.failRelease(w, r, fmt.Errorf("binary of %s %s for %s refused: %w", m.Plugin, m.Version, api.Platform(m.OS, m.Arch), err))
		return
	}
	rel, err := ro.Rollout.Publish(r.Context(), raw, sm)
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	h.opts.Logger.Info("release published", "component", "httpapi", "plugin", m.Plugin, "version", m.Version,
		"os", m.OS, "arch", m.Arch, "sha256", m.SHA256, "length", m.Length, "result", rel.Result, "artifact_created", info.Created, "author", id.Name)
	writeJSON(w, http.StatusOK, PublishResult{Release: rel, Artifact: info})
}

func partErr(p interface{ FormName() string }, err error) string {
	if err == io.EOF {
		return "the upload ends before it"
	}
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("got %q", p.FormName())
}

func (h *handler) releases(w http.ResponseWriter, r *http.Request) {
	if _, err := h.allowRelease(r, auth.ReadRelease, h.opts.Store.Keyspace().Releases()); err != nil {
		h.failRelease(w, r, err)
		return
	}
	rs, err := h.opts.Releases.Rollout.Releases(r.Context(), r.URL.Query().Get("plugin"))
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"releases": rs})
}

// VersionManifests is the body of GET /v1/releases/{plugin}/{version}
// without os and arch: every platform's signed manifest of the version.
type VersionManifests struct {
	Plugin    string                     `json:"plugin"`
	Version   string                     `json:"version"`
	Manifests []rollout.PlatformManifest `json:"manifests"`
}

// manifest serves GET /v1/releases/{plugin}/{version}: with ?os=&arch=
// that platform's signed manifest as published, byte for byte; without,
// every platform's (VersionManifests).
func (h *handler) manifest(w http.ResponseWriter, r *http.Request) {
	plugin, version := r.PathValue("plugin"), r.PathValue("version")
	q := r.URL.Query()
	goos, arch := q.Get("os"), q.Get("arch")
	if (goos == "") != (arch == "") {
		h.failRelease(w, r, badRequest("os and arch go together: ?os=linux&arch=arm64 for one platform's manifest, neither for every platform's (got os=%q arch=%q)",
			goos, arch))
		return
	}
	ks := h.opts.Store.Keyspace()
	key := ks.ReleaseVersion(plugin, version)
	if goos != "" {
		key = ks.Release(plugin, version, goos, arch)
	}
	if _, err := h.allowRelease(r, auth.ReadRelease, key); err != nil {
		h.failRelease(w, r, err)
		return
	}
	if goos == "" {
		ms, err := h.opts.Releases.Rollout.Manifests(r.Context(), plugin, version)
		if err != nil {
			h.failRelease(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, VersionManifests{Plugin: plugin, Version: version, Manifests: ms})
		return
	}
	raw, err := h.opts.Releases.Rollout.Manifest(r.Context(), plugin, version, goos, arch)
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(raw)
}

// artifact serves GET /v1/artifacts/{sha256}, with ranges.
func (h *handler) artifact(w http.ResponseWriter, r *http.Request) {
	sha := r.PathValue("sha256")
	if _, err := h.allowRelease(r, auth.ReadRelease, "/v1/artifacts/"+sha); err != nil {
		h.failRelease(w, r, err)
		return
	}
	if err := h.opts.Releases.Artifacts.Serve(w, r, sha); err != nil {
		h.failRelease(w, r, err)
	}
}

// RolloutRequest is the body of POST /v1/rollouts/{plugin}?scope=.
type RolloutRequest struct {
	Version string `json:"version"`
	// Percent is 1..100; 0 means 100.
	Percent int    `json:"percent,omitempty"`
	Comment string `json:"comment,omitempty"`
	// RequirePlatforms refuses the rollout (400) when registered hosts it
	// targets run a platform the version is not published for; without
	// it they are named in the answer's warnings.
	RequirePlatforms bool `json:"require_platforms,omitempty"`
}

func (h *handler) rolloutSet(w http.ResponseWriter, r *http.Request) {
	sc, err := scopeParam(r)
	var id auth.Identity
	if err == nil {
		id, err = h.allow(r, auth.WriteConfig, sc)
	}
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	var req RolloutRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		h.failRelease(w, r, badRequest("rollout request: %v", err))
		return
	}
	res, err := h.opts.Releases.Rollout.Set(r.Context(), rollout.SetRequest{Scope: sc, Plugin: r.PathValue("plugin"),
		Version: req.Version, Percent: req.Percent, Author: id.Name, Comment: req.Comment, RequirePlatforms: req.RequirePlatforms})
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	h.opts.Logger.Info("rollout written", "component", "httpapi", "scope", sc.String(), "plugin", res.Plugin,
		"version", res.Version, "seq", res.Seq, "revision", res.Revision, "author", id.Name)
	writeJSON(w, http.StatusOK, res)
}

func (h *handler) rolloutUndo(w http.ResponseWriter, r *http.Request) {
	sc, err := scopeParam(r)
	var id auth.Identity
	if err == nil {
		id, err = h.allow(r, auth.WriteConfig, sc)
	}
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	strict, err := requirePlatformsParam(r)
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	res, err := h.opts.Releases.Rollout.UndoWith(r.Context(), rollout.UndoRequest{Scope: sc, Plugin: r.PathValue("plugin"),
		Author: id.Name, Comment: r.URL.Query().Get("comment"), RequirePlatforms: strict})
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	h.opts.Logger.Info("rollout undone", "component", "httpapi", "scope", sc.String(), "plugin", res.Plugin,
		"version", res.Version, "seq", res.Seq, "revision", res.Revision, "author", id.Name)
	writeJSON(w, http.StatusOK, res)
}

// requirePlatformsParam reads the undo route's require_platforms=true|false.
func requirePlatformsParam(r *http.Request) (bool, error) {
	switch v := r.URL.Query().Get("require_platforms"); v {
	case "", "false":
		return false, nil
	case "true":
		return true, nil
	default:
		return false, badRequest("require_platforms must be true or false (got %q)", v)
	}
}

func (h *handler) rolloutStatus(w http.ResponseWriter, r *http.Request) {
	sc, err := scopeParam(r)
	if err == nil {
		_, err = h.allow(r, auth.Read, sc)
	}
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	st, err := h.opts.Releases.Rollout.Status(r.Context(), r.PathValue("plugin"), sc)
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// ArtifactPath is the download path of the artifact whose sha256 is sha
// (64 lowercase hex digits).
func ArtifactPath(sha string) string { return "/v1/artifacts/" + sha }
