package httpapi

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/auth"
	"github.com/vigil-hids/vigil/server/vulnstore"
	"github.com/vigil-hids/vigil/vuln/index"
	"github.com/vigil-hids/vigil/vuln/ingest"
)

// Inventory upload limits (the per-upload ones are ingest's and the
// store's).
const (
	// DefaultVulnMaxInFlight bounds the decompressed bytes of all the
	// inventory uploads being taken in at once: decoding, digesting and
	// indexing them allocates several times that. A typical inventory is
	// 100 KiB to 1 MiB decompressed.
	DefaultVulnMaxInFlight = 64 << 20
	// DefaultVulnBodyTimeout bounds reading an upload (8 MiB at about
	// 0.5 Mbit/s).
	DefaultVulnBodyTimeout = 2 * time.Minute
)

// VulnOptions configures the inventory ingest and vulnerability query
// routes (issue 7).
type VulnOptions struct {
	// Service stores inventories and answers queries.
	Service *vulnstore.Service
	// MaxUpload bounds the (compressed) body of an inventory upload; 0
	// means ingest.DefaultMaxUpload.
	MaxUpload int64
	// MaxInFlight bounds the decompressed bytes of all the uploads being
	// read, decoded and stored at once (0: DefaultVulnMaxInFlight; at
	// least the store's MaxInventory + 1, so that an upload at the limit
	// is taken alone and one past it is refused too large, not busy).
	MaxInFlight int64
	// BodyTimeout bounds reading an upload, from the end of its headers
	// (0: DefaultVulnBodyTimeout).
	BodyTimeout time.Duration
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
	v := h.opts.Vuln
	if v.MaxUpload <= 0 {
		v.MaxUpload = ingest.DefaultMaxUpload
	}
	if v.MaxInFlight <= 0 {
		v.MaxInFlight = DefaultVulnMaxInFlight
	}
	if v.BodyTimeout <= 0 {
		v.BodyTimeout = DefaultVulnBodyTimeout
	}
	v.MaxInFlight = max(v.MaxInFlight, v.Service.MaxInventory()+1)
	h.vulnInFlight = &budget{max: v.MaxInFlight}
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
	v := h.opts.Vuln
	// The server has no read timeout (other routes take large uploads):
	// a host that stalls its body must not hold this handler forever.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(v.BodyTimeout))
	if err := h.allowIngest(r); err != nil {
		h.fail(w, r, err)
		return
	}
	refuse := func(err error) {
		v.Service.Rejected()
		switch {
		case errors.Is(err, errBusy):
			h.refuse(w, r, http.StatusServiceUnavailable, "busy", fmt.Errorf("server busy: %d MiB of inventory uploads are being taken in; send this one again later", v.MaxInFlight>>20))
		case isMaxBytes(err):
			h.failVuln(w, r, fmt.Errorf("%w: upload is larger than %d bytes", ingest.ErrTooLarge, v.MaxUpload))
		case errors.Is(err, os.ErrDeadlineExceeded):
			h.refuse(w, r, http.StatusRequestTimeout, "timeout", fmt.Errorf("body not received within %s", v.BodyTimeout))
		default:
			h.failVuln(w, r, err)
		}
	}
	var body io.Reader = http.MaxBytesReader(w, r.Body, v.MaxUpload)
	switch enc := strings.ToLower(r.Header.Get("Content-Encoding")); enc {
	case "gzip":
		zr, err := gzip.NewReader(body)
		if err != nil {
			refuse(fmt.Errorf("%w: body is not gzip: %w", ingest.ErrInvalid, err)) // the cause, for refuse to match
			return
		}
		defer zr.Close()
		body = zr
	case "", "identity":
	default:
		refuse(badRequest("Content-Encoding %q is not supported (gzip or none)", enc))
		return
	}
	// The decompressed bytes held count against the server-wide budget
	// until the upload is stored.
	maxInv := v.Service.MaxInventory()
	br := h.vulnInFlight.reader(io.LimitReader(body, maxInv+1))
	defer br.release()
	data, err := io.ReadAll(br)
	if err != nil {
		refuse(fmt.Errorf("%w: reading the inventory: %w", ingest.ErrInvalid, err))
		return
	}
	if int64(len(data)) > maxInv {
		refuse(fmt.Errorf("%w: inventory is larger than %d bytes decompressed", ingest.ErrTooLarge, maxInv))
		return
	}
	// The body is in: the deadline must not expire on the server's
	// background read while this stores it (that would cancel the
	// connection's context).
	_ = rc.SetReadDeadline(time.Time{})
	u, err := ingest.ParseUpload(data)
	if err != nil {
		refuse(err)
		return
	}
	ans, err := v.Service.Ingest(u)
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
