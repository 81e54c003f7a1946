package httpapi

// VulnOptions configures the inventory ingest and vulnerability query
// routes (issue 7).
type VulnOptions struct{}

// vulnRoutes registers the vulnerability routes when opts.Vuln is set.
func (h *handler) vulnRoutes() {
	if h.opts.Vuln == nil {
		return
	}
}
