package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/auth"
	"github.com/vigil-hids/vigil/server/cells"
	"github.com/vigil-hids/vigil/server/store"
)

// CellsResult is the answer of a stop, resume or config write when the
// server manages several cells: the default cell's result (or, for a host
// in another cell, that cell's) and each written cell's.
type CellsResult struct {
	store.Result
	Cells []cells.CellResult `json:"cells"`
}

// CellsProgress is the answer of GET /v1/fleet/progress with several
// cells: the merged acknowledgement (Revision and AtRevision are the
// default cell's, Stragglers the first MaxStragglers of all cells) and each
// cell's.
type CellsProgress struct {
	store.Progress
	Cells map[string]store.Progress `json:"cells"`
}

// multi reports whether requests are routed through several cells.
func (h *handler) multi() bool { return h.opts.Cells != nil && len(h.opts.Cells.Names()) > 1 }

func (h *handler) defaultCell() string { return h.opts.Cells.Names()[0] }

// cellsError makes "registered in no cell" a not-found error.
func cellsError(err error) error {
	if errors.Is(err, cells.ErrHostNotFound) {
		return fmt.Errorf("%w: %w", store.ErrNotFound, err)
	}
	return err
}

// hostCell is the cell a host is registered in, or the default cell when
// it is registered nowhere yet (it reads its state when it registers).
func (h *handler) hostCell(ctx context.Context, host string) (string, *store.Store, error) {
	name, _, err := h.opts.Cells.Locate(ctx, host)
	if errors.Is(err, cells.ErrHostNotFound) {
		name, err = h.defaultCell(), nil
	}
	if err != nil {
		return "", nil, err
	}
	st, _ := h.opts.Cells.Store(name)
	return name, st, nil
}

func (h *handler) cellsResult(rs []cells.CellResult) CellsResult {
	out := CellsResult{Cells: rs}
	for _, r := range rs {
		if r.Error == "" && (out.Result.Revision == 0 || r.Cell == h.defaultCell()) {
			out.Result = r.Result
		}
	}
	return out
}

// stopCells writes the stop flag of a fleet or group scope to every cell,
// of a host scope to the host's cell.
func (h *handler) stopCells(ctx context.Context, sc api.Scope, stop bool, id auth.Identity, comment string) ([]cells.CellResult, error) {
	if sc.Kind != api.ScopeHost {
		return h.opts.Cells.SetStop(ctx, sc, stop, id.Name, comment)
	}
	name, st, err := h.hostCell(ctx, sc.Host)
	if err != nil {
		return nil, err
	}
	res, err := st.SetStop(ctx, sc, stop, id.Name, comment)
	return []cells.CellResult{{Cell: name, Result: res}}, err
}

func (h *handler) configSetCells(w http.ResponseWriter, r *http.Request, wr store.Write, id auth.Identity) {
	var rs []cells.CellResult
	var err error
	if wr.Scope.Kind == api.ScopeHost {
		var name string
		var st *store.Store
		if name, st, err = h.hostCell(r.Context(), wr.Scope.Host); err == nil {
			var res store.Result
			res, err = st.Set(r.Context(), wr)
			rs = []cells.CellResult{{Cell: name, Result: res}}
		}
	} else if wr.IfRevision != nil {
		err = badRequest("if_revision names one cell's revision; a %s write goes to every cell (%s) and cannot use it",
			wr.Scope.Kind, strings.Join(h.opts.Cells.Names(), ", "))
	} else {
		rs, err = h.opts.Cells.Set(r.Context(), wr)
	}
	if err != nil {
		h.fail(w, r, cellsError(err))
		return
	}
	h.opts.Logger.Info("desired state written", "component", "httpapi", "scope", wr.Scope.String(), "cells", len(rs), "author", id.Name)
	writeJSON(w, http.StatusOK, h.cellsResult(rs))
}

// progressCells answers progress with several cells. Each cell's revision
// comes as cell_revision=NAME:REV (repeatable, from the stop response's
// cells); revision without any cell_revision is the default cell's. A
// fleet or group scope needs every cell's revision.
func (h *handler) progressCells(w http.ResponseWriter, r *http.Request, sc api.Scope, rev int64) {
	revs := map[string]int64{}
	crs := r.URL.Query()["cell_revision"]
	if rev > 0 && len(crs) == 0 {
		revs[h.defaultCell()] = rev
	}
	for _, v := range crs {
		name, num, ok := strings.Cut(v, ":")
		n, err := strconv.ParseInt(num, 10, 64)
		if !ok || err != nil || n <= 0 {
			h.fail(w, r, badRequest("cell_revision must be CELL:REVISION (got %q)", v))
			return
		}
		if _, known := h.opts.Cells.Store(name); !known {
			h.fail(w, r, badRequest("cell_revision names unknown cell %q (cells: %s)", name, strings.Join(h.opts.Cells.Names(), ", ")))
			return
		}
		revs[name] = n
	}
	var missing []string
	var results []cells.CellResult
	for _, name := range h.opts.Cells.Names() {
		if n, ok := revs[name]; ok {
			results = append(results, cells.CellResult{Cell: name, Result: store.Result{Revision: n}})
		} else {
			missing = append(missing, name)
		}
	}
	if len(results) == 0 || (sc.Kind != api.ScopeHost && len(missing) > 0) {
		h.fail(w, r, badRequest("%s spans cells %s: give cell_revision=CELL:REVISION for %s (from the stop or resume response's cells)",
			sc, strings.Join(h.opts.Cells.Names(), ", "), strings.Join(missing, ", ")))
		return
	}
	p, err := h.opts.Cells.Progress(r.Context(), sc, results)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := CellsProgress{Progress: store.Progress{Scope: sc.String(), Targeted: p.Targeted, Acknowledged: p.Acknowledged,
		Stragglers: []string{}}, Cells: p.Cells}
	for name, cp := range p.Cells {
		out.Stragglers = append(out.Stragglers, cp.Stragglers...)
		out.StragglerCount += cp.StragglerCount
		if name == h.defaultCell() || out.Revision == 0 {
			out.Revision, out.AtRevision = cp.Revision, cp.AtRevision
		}
	}
	sort.Strings(out.Stragglers)
	if len(out.Stragglers) > store.MaxStragglers {
		out.Stragglers = out.Stragglers[:store.MaxStragglers]
	}
	writeJSON(w, http.StatusOK, out)
}
