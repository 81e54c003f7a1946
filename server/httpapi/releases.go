package httpapi

// ReleaseOptions configures the release, artifact and rollout routes
// (issue 5).
type ReleaseOptions struct{}

// releaseRoutes registers the release routes when opts.Releases is set.
func (h *handler) releaseRoutes() {
	if h.opts.Releases == nil {
		return
	}
}
