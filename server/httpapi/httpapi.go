// Package httpapi is the server's HTTP JSON API, everything vigilctl does:
// agents, per-scope config with history, diff and rollback, the fleet stop
// with acknowledgement progress, server status, and /metrics. Every request
// is authenticated (auth) and checked against the caller's role before the
// store is touched. docs/server.md lists the routes.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/auth"
	"github.com/vigil-hids/vigil/server/cells"
	"github.com/vigil-hids/vigil/server/desired"
	"github.com/vigil-hids/vigil/server/jsondiff"
	"github.com/vigil-hids/vigil/server/rollout"
	"github.com/vigil-hids/vigil/server/store"
)

// Options configures the handler.
type Options struct {
	Store *store.Store
	// Cells, if set, holds Store as its first (default) cell and further
	// cells (cells.go): the fleet stop, progress, agent list and count and
	// fleet/group config writes then go to every cell; a host's config
	// goes to its cell. Everything else stays on Store.
	Cells *cells.Set
	// Status returns the server's status (cluster, replicas, election).
	Status func(ctx context.Context) (any, error)
	// Gatherer serves /metrics; nil disables it.
	Gatherer prometheus.Gatherer
	Logger   *slog.Logger
	// Anonymous, if set, is the identity of callers without a client
	// certificate (the --insecure loopback development mode only).
	Anonymous *auth.Identity
	// Releases serves the release and rollout routes (releases.go); nil
	// leaves them out.
	Releases *ReleaseOptions
	// Vuln serves the vulnerability routes (vuln.go); nil leaves them out.
	Vuln *VulnOptions
	// Keyring serves the release keyring routes (keyring.go); nil leaves
	// them out.
	Keyring *KeyringOptions
	// Events configures POST /v1/events (events.go); nil or a nil Out
	// answers it 404 ("disabled").
	Events *EventsOptions
}

// Error is the body of every failed request.
type Error struct {
	Error string `json:"error"`
	// Code is one of invalid, too_large, conflict, forbidden,
	// unauthenticated, not_found, internal; the ingest routes (events,
	// vulnerability inventories) also answer timeout (408), busy and
	// unavailable (503, to be sent again later) and disabled (404).
	Code string `json:"code"`
}

type handler struct {
	opts   Options
	mux    *http.ServeMux
	events *eventsState
	// vulnInFlight bounds the inventory uploads being taken in (vuln.go).
	vulnInFlight *budget
}

// New returns the API handler.
func New(opts Options) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	h := &handler{opts: opts, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /v1/whoami", h.whoami)
	h.mux.HandleFunc("GET /v1/agents", h.agents)
	h.mux.HandleFunc("GET /v1/agents/count", h.count)
	h.mux.HandleFunc("GET /v1/config", h.configGet)
	h.mux.HandleFunc("PUT /v1/config", h.configSet)
	h.mux.HandleFunc("GET /v1/config/effective", h.effective)
	h.mux.HandleFunc("GET /v1/config/history", h.history)
	h.mux.HandleFunc("GET /v1/config/diff", h.diff)
	h.mux.HandleFunc("POST /v1/config/rollback", h.rollback)
	h.mux.HandleFunc("POST /v1/fleet/stop", h.stop(true))
	h.mux.HandleFunc("POST /v1/fleet/resume", h.stop(false))
	h.mux.HandleFunc("GET /v1/fleet/progress", h.progress)
	h.mux.HandleFunc("GET /v1/status", h.status)
	h.releaseRoutes()
	h.vulnRoutes()
	h.keyringRoutes()
	h.eventsRoutes()
	if opts.Gatherer != nil {
		h.mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{}))
	}
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, err := h.identify(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.mux.ServeHTTP(w, r.WithContext(auth.With(r.Context(), id)))
}

func (h *handler) identify(r *http.Request) (auth.Identity, error) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		return auth.FromCertificate(r.TLS.VerifiedChains[0][0])
	}
	if h.opts.Anonymous != nil {
		return *h.opts.Anonymous, nil
	}
	return auth.Identity{}, fmt.Errorf("%w: a client certificate signed by the server's CA is required", auth.ErrUnauthenticated)
}

// allow checks the caller's role for action on scope.
func (h *handler) allow(r *http.Request, action auth.Action, scope api.Scope) (auth.Identity, error) {
	id, _ := auth.From(r.Context())
	return id, id.Allow(action, scope, h.opts.Store.Keyspace().ScopeKey(scope))
}

// reply answers 200 with v as JSON, or the error as fail does.
func (h *handler) reply(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	code, status := "internal", http.StatusInternalServerError
	switch {
	case errors.Is(err, desired.ErrTooLarge):
		code, status = "too_large", http.StatusRequestEntityTooLarge
	case errors.Is(err, desired.ErrInvalid), errors.Is(err, errBadRequest):
		code, status = "invalid", http.StatusBadRequest
	case errors.Is(err, store.ErrConflict):
		code, status = "conflict", http.StatusConflict
	case errors.Is(err, auth.ErrForbidden):
		code, status = "forbidden", http.StatusForbidden
	case errors.Is(err, auth.ErrUnauthenticated):
		code, status = "unauthenticated", http.StatusUnauthorized
	case errors.Is(err, store.ErrNotFound):
		code, status = "not_found", http.StatusNotFound
	}
	h.refuse(w, r, status, code, err)
}

// refuse logs a refused request with its caller and answers it with err.
func (h *handler) refuse(w http.ResponseWriter, r *http.Request, status int, code string, err error) {
	id, _ := auth.From(r.Context())
	h.opts.Logger.Warn("request refused", "component", "httpapi", "method", r.Method, "path", r.URL.Path,
		"identity", id.Name, "role", string(id.Role), "code", code, "error", err.Error())
	writeJSON(w, status, Error{Error: err.Error(), Code: code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

var errBadRequest = errors.New("httpapi: bad request")

func badRequest(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errBadRequest}, a...)...)
}

func scopeParam(r *http.Request) (api.Scope, error) {
	s := r.URL.Query().Get("scope")
	if s == "" {
		s = "fleet"
	}
	sc, err := api.ParseScope(s)
	if err != nil {
		return sc, badRequest("%v", err)
	}
	return sc, nil
}

func intParam(r *http.Request, name string, def int64) (int64, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, badRequest("%s must be a non-negative integer (got %q)", name, s)
	}
	return n, nil
}

func (h *handler) whoami(w http.ResponseWriter, r *http.Request) {
	id, _ := auth.From(r.Context())
	writeJSON(w, http.StatusOK, id)
}

func (h *handler) agents(w http.ResponseWriter, r *http.Request) {
	if _, err := h.allow(r, auth.Read, api.Scope{Kind: api.ScopeFleet}); err != nil {
		h.fail(w, r, err)
		return
	}
	sel, err := store.ParseSelector(r.URL.Query()["label"])
	if err != nil {
		h.fail(w, r, badRequest("%v", err))
		return
	}
	limit, err := intParam(r, "limit", 0)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if h.multi() {
		as, err := h.opts.Cells.Agents(r.Context(), sel, int(limit))
		if err != nil {
			h.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"agents": as})
		return
	}
	as, err := h.opts.Store.Agents(r.Context(), sel, int(limit))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"agents": as})
}

func (h *handler) count(w http.ResponseWriter, r *http.Request) {
	if _, err := h.allow(r, auth.Read, api.Scope{Kind: api.ScopeFleet}); err != nil {
		h.fail(w, r, err)
		return
	}
	sel, err := store.ParseSelector(r.URL.Query()["label"])
	if err != nil {
		h.fail(w, r, badRequest("%v", err))
		return
	}
	by := r.URL.Query().Get("by")
	if by != "" && !api.ValidName(by) {
		h.fail(w, r, badRequest("by %q is not a label name", by))
		return
	}
	if h.multi() {
		c, err := h.opts.Cells.Count(r.Context(), sel, by)
		h.reply(w, r, c, err)
		return
	}
	c, err := h.opts.Store.Count(r.Context(), sel, by)
	h.reply(w, r, c, err)
}

func (h *handler) configGet(w http.ResponseWriter, r *http.Request) {
	sc, err := scopeParam(r)
	if err == nil {
		_, err = h.allow(r, auth.Read, sc)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	cur, err := h.opts.Store.Get(r.Context(), sc)
	h.reply(w, r, cur, err)
}

// effective shows the desired state a host derives from its layers.
func (h *handler) effective(w http.ResponseWriter, r *http.Request) {
	host := r.URL.Query().Get("host")
	var err error
	if !api.ValidName(host) {
		err = badRequest("host %q is not a valid host name", host)
	}
	if err == nil {
		_, err = h.allow(r, auth.Read, api.Scope{Kind: api.ScopeHost, Host: host})
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	eff, err := h.opts.Store.Effective(r.Context(), host)
	h.reply(w, r, eff, err)
}

// configSet reads a JSON or YAML document from the body. The optional
// if_revision parameter makes the write conditional on the scope's
// revision (from a GET); without it the server reads and compares itself.
func (h *handler) configSet(w http.ResponseWriter, r *http.Request) {
	sc, err := scopeParam(r)
	var id auth.Identity
	if err == nil {
		id, err = h.allow(r, auth.WriteConfig, sc)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, desired.MaxInput))
	if err != nil {
		h.fail(w, r, fmt.Errorf("%w: reading the document: %w", desired.ErrTooLarge, err))
		return
	}
	st, err := desired.Parse(body)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	wr := store.Write{Scope: sc, State: st, Author: id.Name, Comment: r.URL.Query().Get("comment")}
	if r.URL.Query().Has("if_revision") {
		rev, err := intParam(r, "if_revision", 0)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		wr.IfRevision = &rev
	}
	if h.multi() {
		h.configSetCells(w, r, wr, id)
		return
	}
	// A version the document newly names must be published, and the write
	// lands only while it still is (not after a concurrent release rm).
	if ro := h.opts.Releases; ro != nil && ro.Rollout != nil {
		cur, err := h.opts.Store.Get(r.Context(), sc)
		if err == nil {
			wr.Guards, err = ro.Rollout.NamedGuards(r.Context(), st, cur.Document.State)
			if errors.Is(err, rollout.ErrNoRelease) {
				err = badRequest("%v", err)
			}
		}
		if err != nil {
			h.fail(w, r, err)
			return
		}
	}
	res, err := h.opts.Store.Set(r.Context(), wr)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.opts.Logger.Info("desired state written", "component", "httpapi", "scope", sc.String(), "seq", res.Seq,
		"revision", res.Revision, "author", id.Name)
	writeJSON(w, http.StatusOK, res)
}

func (h *handler) history(w http.ResponseWriter, r *http.Request) {
	sc, err := scopeParam(r)
	if err == nil {
		_, err = h.allow(r, auth.Read, sc)
	}
	var limit int64
	if err == nil {
		limit, err = intParam(r, "limit", 0)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	hist, err := h.opts.Store.History(r.Context(), sc, limit)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"scope": sc.String(), "history": hist})
}

// DiffResult is the body of GET /v1/config/diff.
type DiffResult struct {
	Scope   string            `json:"scope"`
	From    int64             `json:"from"`
	To      int64             `json:"to"`
	Changes []jsondiff.Change `json:"changes"`
	Text    string            `json:"text"`
}

func (h *handler) diff(w http.ResponseWriter, r *http.Request) {
	sc, err := scopeParam(r)
	if err == nil {
		_, err = h.allow(r, auth.Read, sc)
	}
	var from, to int64
	if err == nil {
		from, err = intParam(r, "from", 0)
	}
	if err == nil {
		to, err = intParam(r, "to", 0)
	}
	if err == nil && from == 0 {
		err = badRequest("from is required (a history seq)")
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	ch, err := h.opts.Store.Diff(r.Context(), sc, from, to)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if ch == nil {
		ch = []jsondiff.Change{}
	}
	writeJSON(w, http.StatusOK, DiffResult{Scope: sc.String(), From: from, To: to, Changes: ch, Text: jsondiff.Format(ch)})
}

func (h *handler) rollback(w http.ResponseWriter, r *http.Request) {
	sc, err := scopeParam(r)
	var id auth.Identity
	if err == nil {
		id, err = h.allow(r, auth.WriteConfig, sc)
	}
	var to int64
	if err == nil {
		to, err = intParam(r, "to", 0)
	}
	if err == nil && to == 0 {
		err = badRequest("to is required (the history seq to roll back to)")
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	res, err := h.opts.Store.Rollback(r.Context(), sc, to, id.Name, r.URL.Query().Get("comment"))
	h.reply(w, r, res, err)
}

func (h *handler) stop(stop bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sc, err := scopeParam(r)
		var id auth.Identity
		if err == nil {
			id, err = h.allow(r, auth.Stop, sc)
		}
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if h.multi() {
			rs, err := h.stopCells(r.Context(), sc, stop, id, r.URL.Query().Get("comment"))
			if err != nil {
				h.fail(w, r, cellsError(err))
				return
			}
			out := h.cellsResult(rs)
			h.opts.Logger.Info("stop flag written", "component", "httpapi", "scope", sc.String(), "stop", stop,
				"cells", len(rs), "author", id.Name)
			writeJSON(w, http.StatusOK, out)
			return
		}
		res, err := h.opts.Store.SetStop(r.Context(), sc, stop, id.Name, r.URL.Query().Get("comment"))
		if err != nil {
			h.fail(w, r, err)
			return
		}
		h.opts.Logger.Info("stop flag written", "component", "httpapi", "scope", sc.String(), "stop", stop,
			"revision", res.Revision, "author", id.Name)
		writeJSON(w, http.StatusOK, res)
	}
}

func (h *handler) progress(w http.ResponseWriter, r *http.Request) {
	sc, err := scopeParam(r)
	if err == nil {
		_, err = h.allow(r, auth.Read, sc)
	}
	var rev int64
	if err == nil {
		rev, err = intParam(r, "revision", 0)
	}
	if err == nil && h.multi() {
		h.progressCells(w, r, sc, rev)
		return
	}
	if err == nil && rev == 0 {
		err = badRequest("revision is required (from the stop or resume response)")
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	p, err := h.opts.Store.Progress(r.Context(), sc, rev)
	h.reply(w, r, p, err)
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	if _, err := h.allow(r, auth.Read, api.Scope{Kind: api.ScopeFleet}); err != nil {
		h.fail(w, r, err)
		return
	}
	if h.opts.Status == nil {
		h.fail(w, r, errors.New("httpapi: no status source"))
		return
	}
	st, err := h.opts.Status(r.Context())
	h.reply(w, r, st, err)
}

// Replica is one server replica's registration value.
type Replica struct {
	ID        string    `json:"id"`
	Address   string    `json:"address"`
	Version   string    `json:"version"`
	StartedAt time.Time `json:"started_at"`
}

// Status is the body of GET /v1/status: this replica, the others
// registered under /hids/servers/, the election and etcd.
type Status struct {
	Replica        Replica             `json:"replica"`
	IsLeader       bool                `json:"is_leader"`
	ElectionLeader string              `json:"election_leader"`
	Replicas       []Replica           `json:"replicas"`
	Etcd           store.ClusterStatus `json:"etcd"`
	EtcdError      string              `json:"etcd_error,omitempty"`
}
