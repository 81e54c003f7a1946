package httpapi

import (
	"net/http"
	"strconv"
	"time"

	"github.com/vigil-hids/vigil/server/artifacts"
	"github.com/vigil-hids/vigil/server/auth"
	"github.com/vigil-hids/vigil/server/rollout"
)

// RemoveResult is the body of a successful DELETE
// /v1/releases/{plugin}/{version}: one record per removed platform.
type RemoveResult struct {
	Removed []rollout.Removal `json:"removed"`
}

// removeRoutes registers the removal and artifact collection routes
// (called by releaseRoutes).
func (h *handler) removeRoutes() {
	h.mux.HandleFunc("DELETE /v1/releases/{plugin}/{version}", h.removeRelease)
	h.mux.HandleFunc("GET /v1/releases-removed", h.removedReleases)
	h.mux.HandleFunc("POST /v1/artifacts/gc", h.collectArtifacts)
}

// removeRelease serves DELETE /v1/releases/{plugin}/{version}?os=&arch=&comment=:
// removing a release is the release publishers' action (admin).
func (h *handler) removeRelease(w http.ResponseWriter, r *http.Request) {
	plugin, version := r.PathValue("plugin"), r.PathValue("version")
	q := r.URL.Query()
	goos, arch := q.Get("os"), q.Get("arch")
	ks := h.opts.Store.Keyspace()
	key := ks.ReleaseVersion(plugin, version)
	if goos != "" {
		key = ks.Release(plugin, version, goos, arch)
	}
	id, err := h.allowRelease(r, auth.Publish, key)
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	if (goos == "") != (arch == "") {
		h.failRelease(w, r, badRequest("os and arch go together: ?os=linux&arch=arm64 removes one platform, neither removes every platform (got os=%q arch=%q)",
			goos, arch))
		return
	}
	rms, err := h.opts.Releases.Rollout.Remove(r.Context(), rollout.RemoveRequest{Plugin: plugin, Version: version, OS: goos, Arch: arch,
		Author: id.Name, Comment: q.Get("comment")})
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	for _, rm := range rms {
		h.opts.Logger.Info("release removed", "component", "httpapi", "plugin", rm.Plugin, "version", rm.Version, "os", rm.OS,
			"arch", rm.Arch, "sha256", rm.SHA256, "revision", rm.Revision, "author", id.Name, "comment", rm.Comment)
	}
	writeJSON(w, http.StatusOK, RemoveResult{Removed: rms})
}

// removedReleases serves GET /v1/releases-removed?plugin=P: the removal
// records, for the roles that read the API (not hosts).
func (h *handler) removedReleases(w http.ResponseWriter, r *http.Request) {
	if _, err := h.allowRelease(r, auth.Read, h.opts.Store.Keyspace().RemovedReleases()); err != nil {
		h.failRelease(w, r, err)
		return
	}
	rms, err := h.opts.Releases.Rollout.Removed(r.Context(), r.URL.Query().Get("plugin"))
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, RemoveResult{Removed: rms})
}

// collectArtifacts serves POST /v1/artifacts/gc?grace=1h&dry_run=true: it
// removes from this replica's artifact store the artifacts no manifest
// names that are older than grace (admin).
func (h *handler) collectArtifacts(w http.ResponseWriter, r *http.Request) {
	ro := h.opts.Releases
	id, err := h.allowRelease(r, auth.Publish, ro.Artifacts.Dir())
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	q := r.URL.Query()
	var grace time.Duration
	if s := q.Get("grace"); s != "" {
		if grace, err = time.ParseDuration(s); err != nil {
			h.failRelease(w, r, badRequest("grace must be a duration such as 1h (got %q)", s))
			return
		}
		if grace < artifacts.MinGrace {
			h.failRelease(w, r, badRequest("grace must be at least %s, so a publish in flight keeps its artifact (got %s)", artifacts.MinGrace, grace))
			return
		}
	}
	dry := false
	if s := q.Get("dry_run"); s != "" {
		if dry, err = strconv.ParseBool(s); err != nil {
			h.failRelease(w, r, badRequest("dry_run must be true or false (got %q)", s))
			return
		}
	}
	rep, err := ro.Rollout.CollectArtifacts(r.Context(), ro.Artifacts, grace, dry)
	if err != nil {
		h.failRelease(w, r, err)
		return
	}
	h.opts.Logger.Info("artifacts collected", "component", "httpapi", "dry_run", dry, "grace", rep.Grace, "removed", len(rep.Removed),
		"bytes_freed", rep.BytesFreed, "young", len(rep.Young), "named", rep.Named, "author", id.Name)
	writeJSON(w, http.StatusOK, rep)
}
