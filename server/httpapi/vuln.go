package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/auth"
	"github.com/vigil-hids/vigil/server/vulnstore"
	"github.com/vigil-hids/vigil/vuln/index"
	"github.com/vigil-hids/vigil/vuln/ingest"
)

// VulnOptions configures the inventory ingest and vulnerability query
// routes (issue 7).
type VulnOptions struct {
	// Service stores inventories and answers queries.
	Service *vulnstore.Service
	// MaxUpload bounds the (compressed) body of an inventory upload; 0
	// means ingest.DefaultMaxUpload.
	MaxUpload int64
}

// Vulnerability routes:
//
//	POST /v1/vuln/digest          {host, digest} → {known}        roles host, admin
//	POST /v1/vuln/inventory       gzip {host, digest, inventory}   roles host, admin
//	GET  /v1/vuln/cves/{id}?limit=N  hosts a CVE (or advisory ID) affects
//	GET  /v1/vuln/hosts/{name}    a host's hits
//	GET  /v1/vuln/packages/{name}?below=VERSION
//	GET  /v1/vuln/top?n=N
//	GET  /v1/vuln/stats
//	POST /v1/vuln/reload          re-import the server's OSV paths (admin)
func (h *handler) vulnRoutes() {
	if h.opts.Vuln == nil {
		return
	}
	if h.opts.Vuln.MaxUpload <= 0 {
		h.opts.Vuln.MaxUpload = ingest.DefaultMaxUpload
	}
	h.mux.HandleFunc("POST /v1/vuln/digest", h.vulnDigest)
	h.mux.HandleFunc("POST /v1/vuln/inventory", h.vulnInventory)
	h.mux.HandleFunc("GET /v1/vuln/cves/{id}", h.vulnCVE)
	h.mux.HandleFunc("GET /v1/vuln/hosts/{name}", h.vulnHost)
	h.mux.HandleFunc("GET /v1/vuln/packages/{name}", h.vulnPackage)
	h.mux.HandleFunc("GET /v1/vuln/top", h.vulnTop)
	h.mux.HandleFunc("GET /v1/vuln/stats", h.vulnStats)
	h.mux.HandleFunc("POST /v1/vuln/reload", h.vulnReload)
}

// allowIngest lets hosts (and admins) post inventories. The host role may
// do nothing else on this API; its certificate does not bind a host name,
// so any host certificate may report for any host name, as it may write
// any registration under agent/ in etcd.
func (h *handler) allowIngest(r *http.Request) error {
	id, _ := auth.From(r.Context())
	if id.Role == auth.Host || id.Role == auth.Admin {
		return nil
	}
	return fmt.Errorf("%w: role %q (%s) may not post inventories: only hosts (and admins) do", auth.ErrForbidden, id.Role, id.Name)
}

// allowVulnRead lets every role that reads the fleet query the index.
func (h *handler) allowVulnRead(r *http.Request) error {
	id, _ := auth.From(r.Context())
	return id.Allow(auth.Read, api.Scope{Kind: api.ScopeFleet}, "the vulnerability index")
}

// failVuln maps the store's and the index's errors to statuses; others
// go to fail.
func (h *handler) failVuln(w http.ResponseWriter, r *http.Request, err error) {
	code, status := "", 0
	switch {
	case errors.Is(err, ingest.ErrTooLarge):
		code, status = "too_large", http.StatusRequestEntityTooLarge
	case errors.Is(err, ingest.ErrDigestMismatch):
		code, status = "digest_mismatch", http.StatusBadRequest
	case errors.Is(err, ingest.ErrInvalid):
		code, status = "invalid", http.StatusBadRequest
	case errors.Is(err, index.ErrUnknownCVE), errors.Is(err, index.ErrUnknownHost):
		code, status = "not_found", http.StatusNotFound
	default:
		h.fail(w, r, err)
		return
	}
	h.refuse(w, r, status, code, err)
}

func (h *handler) vulnDigest(w http.ResponseWriter, r *http.Request) {
	if err := h.allowIngest(r); err != nil {
		h.fail(w, r, err)
		return
	}
	d, err := ingest.DecodeDigest(http.MaxBytesReader(w, r.Body, 64<<10))
	if err != nil {
		h.failVuln(w, r, err)
		return
	}
	ans, err := h.opts.Vuln.Service.Digest(d)
	if err != nil {
		h.failVuln(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ans)
}

func (h *handler) vulnInventory(w http.ResponseWriter, r *http.Request) {
	if err := h.allowIngest(r); err != nil {
		h.fail(w, r, err)
		return
	}
	gz := false
	switch enc := strings.ToLower(r.Header.Get("Content-Encoding")); enc {
	case "gzip":
		gz = true
	case "", "identity":
	default:
		h.fail(w, r, badRequest("Content-Encoding %q is not supported (gzip or none)", enc))
		return
	}
	max := h.opts.Vuln.MaxUpload
	body := http.MaxBytesReader(w, r.Body, max)
	u, err := ingest.DecodeUpload(body, gz, h.opts.Vuln.Service.MaxInventory())
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) || strings.Contains(err.Error(), "request body too large") {
			err = fmt.Errorf("%w: upload is larger than %d bytes", ingest.ErrTooLarge, max)
		}
		h.opts.Vuln.Service.Rejected()
		h.failVuln(w, r, err)
		return
	}
	ans, err := h.opts.Vuln.Service.Ingest(u)
	if err != nil {
		h.failVuln(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ans)
}

// advisoryIDRE is what a CVE or advisory ID looks like: CVE-2024-0727,
// DEBIAN-CVE-2024-0727, RLSA-2024:1234, GHSA-xxxx-xxxx-xxxx.
var advisoryIDRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9._:]+)+$`)

// cveRE is a CVE ID proper.
var cveRE = regexp.MustCompile(`^CVE-[0-9]{4}-[0-9]{4,}$`)

// checkAdvisoryID refuses what cannot be a CVE or advisory ID, naming the
// expected form.
func checkAdvisoryID(id string) error {
	if len(id) > 128 || !advisoryIDRE.MatchString(id) {
		return badRequest("%q is not a CVE or advisory ID (e.g. CVE-2024-0727 or DEBIAN-CVE-2024-0727)", id)
	}
	if strings.HasPrefix(strings.ToUpper(id), "CVE-") && !cveRE.MatchString(id) {
		return badRequest("%q is not a CVE ID: want CVE-YYYY-NNNN (upper case, four or more digits)", id)
	}
	return nil
}

func (h *handler) vulnCVE(w http.ResponseWriter, r *http.Request) {
	if err := h.allowVulnRead(r); err != nil {
		h.fail(w, r, err)
		return
	}
	id := r.PathValue("id")
	if err := checkAdvisoryID(id); err != nil {
		h.fail(w, r, err)
		return
	}
	limit, err := intParam(r, "limit", 0)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	res, err := h.opts.Vuln.Service.Index().HostsForCVELimit(id, int(limit))
	if err != nil {
		h.failVuln(w, r, err)
		return
	}
	if res.Inventories == nil {
		res.Inventories = []index.InventoryHits{}
	}
	writeCompact(w, res)
}

// writeCompact writes a large answer without indentation (a CVE's host
// list can run to megabytes).
func writeCompact(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(v)
}

func (h *handler) vulnHost(w http.ResponseWriter, r *http.Request) {
	if err := h.allowVulnRead(r); err != nil {
		h.fail(w, r, err)
		return
	}
	name := r.PathValue("name")
	if !api.ValidName(name) {
		h.fail(w, r, badRequest("host %q is not a valid host name", name))
		return
	}
	res, err := h.opts.Vuln.Service.Index().CVEsForHost(name)
	if err != nil {
		h.failVuln(w, r, err)
		return
	}
	if res.Hits == nil {
		res.Hits = []index.Hit{}
	}
	writeCompact(w, res)
}

// PackageVersions is the body of GET /v1/vuln/packages/{name}.
type PackageVersions struct {
	Package  string                 `json:"package"`
	Below    string                 `json:"below,omitempty"`
	Versions []index.PackageVersion `json:"versions"`
}

func (h *handler) vulnPackage(w http.ResponseWriter, r *http.Request) {
	if err := h.allowVulnRead(r); err != nil {
		h.fail(w, r, err)
		return
	}
	name, below := r.PathValue("name"), r.URL.Query().Get("below")
	if name == "" || len(name) > 256 || strings.ContainsAny(name, " \t\n/") {
		h.fail(w, r, badRequest("package %q is not a package name", name))
		return
	}
	if len(below) > 256 || strings.ContainsAny(below, " \t\n") {
		h.fail(w, r, badRequest("below %q is not a version", below))
		return
	}
	vs := h.opts.Vuln.Service.Index().Packages(name, below)
	writeJSON(w, http.StatusOK, PackageVersions{Package: name, Below: below, Versions: vs})
}

// Top is the body of GET /v1/vuln/top.
type Top struct {
	CVEs []index.CVECount `json:"cves"`
}

func (h *handler) vulnTop(w http.ResponseWriter, r *http.Request) {
	if err := h.allowVulnRead(r); err != nil {
		h.fail(w, r, err)
		return
	}
	n, err := intParam(r, "n", 20)
	if err == nil && (n < 1 || n > 10000) {
		err = badRequest("n must be between 1 and 10000 (got %d)", n)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, Top{CVEs: h.opts.Vuln.Service.Index().Top(int(n))})
}

func (h *handler) vulnStats(w http.ResponseWriter, r *http.Request) {
	if err := h.allowVulnRead(r); err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, h.opts.Vuln.Service.Stats())
}

func (h *handler) vulnReload(w http.ResponseWriter, r *http.Request) {
	id, _ := auth.From(r.Context())
	if id.Role != auth.Admin {
		h.fail(w, r, fmt.Errorf("%w: role %q (%s) may not reload advisories: admins do", auth.ErrForbidden, id.Role, id.Name))
		return
	}
	imp, err := h.opts.Vuln.Service.Reload()
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.opts.Logger.Info("advisories reloaded", "component", "httpapi", "author", id.Name, "added", imp.Added, "replaced", imp.Replaced)
	writeJSON(w, http.StatusOK, imp)
}
