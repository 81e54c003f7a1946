// Package cells lets one vigil-server manage a fleet split into cells: one
// etcd cluster per cell, each holding the whole Vigil keyspace for the hosts
// configured with that cell's endpoints (DESIGN.md, "Scale"). A host knows
// its cell by its configuration (control.endpoints); the server knows every
// cell and
//
//   - writes a fleet-wide or group change to every cell in parallel (one
//     write per cell, so a fleet-wide emergency stop costs the time of the
//     slowest cell, not the sum), reporting each cell's revision and error;
//   - writes a host's change only to the cell the host is registered in;
//   - merges host counts, lists and acknowledgement progress, each host
//     tagged with its cell.
//
// A Set refuses two cells that are the same etcd cluster (same cluster ID),
// which would count every host twice.
package cells

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/store"
)

// Cell is one etcd cluster of the fleet and the store over it.
type Cell struct {
	Name  string
	Store *store.Store
}

// Set is the fleet's cells.
type Set struct {
	cells []Cell
}

// ErrHostNotFound means no cell holds a registration of the host.
var ErrHostNotFound = errors.New("cells: host is registered in no cell")

// New checks the cells (at least one, valid unique names, a store each) and
// returns the set. Check verifies that they are distinct clusters.
func New(cells []Cell) (*Set, error) {
	if len(cells) == 0 {
		return nil, errors.New("cells: need at least one cell")
	}
	var errs []error
	seen := map[string]bool{}
	for i, c := range cells {
		switch {
		case !api.ValidName(c.Name):
			errs = append(errs, fmt.Errorf("cells: cell %d: name %q must be letters, digits, '.', '-', '_'", i, c.Name))
		case seen[c.Name]:
			errs = append(errs, fmt.Errorf("cells: cell name %q appears twice", c.Name))
		}
		seen[c.Name] = true
		if c.Store == nil {
			errs = append(errs, fmt.Errorf("cells: cell %q has no store", c.Name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Set{cells: append([]Cell(nil), cells...)}, nil
}

// Names returns the cells' names in configuration order.
func (s *Set) Names() []string {
	out := make([]string, len(s.cells))
	for i, c := range s.cells {
		out[i] = c.Name
	}
	return out
}

// Store returns the store of the named cell.
func (s *Set) Store(name string) (*store.Store, bool) {
	for _, c := range s.cells {
		if c.Name == name {
			return c.Store, true
		}
	}
	return nil, false
}

// each runs fn on every cell in parallel and returns the errors joined,
// each naming its cell.
func (s *Set) each(ctx context.Context, fn func(ctx context.Context, i int, c Cell) error) error {
	errs := make([]error, len(s.cells))
	var wg sync.WaitGroup
	for i, c := range s.cells {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx, i, c); err != nil {
				errs[i] = fmt.Errorf("cell %s: %w", c.Name, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Check reads every cell's cluster ID and fails if two cells are the same
// etcd cluster or a cell does not answer.
func (s *Set) Check(ctx context.Context) error {
	ids := make([]uint64, len(s.cells))
	if err := s.each(ctx, func(ctx context.Context, i int, c Cell) error {
		resp, err := c.Store.Client().Get(ctx, c.Store.Keyspace().Agents(), clientv3.WithCountOnly())
		if err != nil {
			return err
		}
		ids[i] = resp.Header.ClusterId
		return nil
	}); err != nil {
		return err
	}
	first := map[uint64]string{}
	var errs []error
	for i, id := range ids {
		if other, ok := first[id]; ok {
			errs = append(errs, fmt.Errorf("cells: %s and %s are the same etcd cluster (ID %x): every host would count twice", other, s.cells[i].Name, id))
			continue
		}
		first[id] = s.cells[i].Name
	}
	return errors.Join(errs...)
}

// CellResult is one cell's part of a fleet-wide write.
type CellResult struct {
	Cell   string       `json:"cell"`
	Result store.Result `json:"result"`
	Error  string       `json:"error,omitempty"`
}

// Set writes w to every cell in parallel (fleet and group scopes) or to the
// host's cell (host scope). It returns one result per cell written, in
// configuration order, and an error naming every cell that failed: the
// others keep the change, and writing again is safe.
func (s *Set) Set(ctx context.Context, w store.Write) ([]CellResult, error) {
	if w.Scope.Kind == api.ScopeHost {
		cell, _, err := s.Locate(ctx, w.Scope.Host)
		if err != nil {
			return nil, err
		}
		st, _ := s.Store(cell)
		res, err := st.Set(ctx, w)
		out := []CellResult{{Cell: cell, Result: res}}
		if err != nil {
			out[0].Error = err.Error()
			return out, fmt.Errorf("cell %s: %w", cell, err)
		}
		return out, nil
	}
	if w.IfRevision != nil {
		return nil, errors.New("cells: IfRevision names one cell's revision; a fleet or group write cannot use it")
	}
	return s.all(ctx, func(ctx context.Context, c Cell) (store.Result, error) { return c.Store.Set(ctx, w) })
}

// SetStop sets or clears the stop flag of a fleet or group scope in every
// cell in parallel, or of a host scope in the host's cell.
func (s *Set) SetStop(ctx context.Context, scope api.Scope, stop bool, author, comment string) ([]CellResult, error) {
	if scope.Kind == api.ScopeHost {
		cell, _, err := s.Locate(ctx, scope.Host)
		if err != nil {
			return nil, err
		}
		st, _ := s.Store(cell)
		res, err := st.SetStop(ctx, scope, stop, author, comment)
		out := []CellResult{{Cell: cell, Result: res}}
		if err != nil {
			out[0].Error = err.Error()
			return out, fmt.Errorf("cell %s: %w", cell, err)
		}
		return out, nil
	}
	return s.all(ctx, func(ctx context.Context, c Cell) (store.Result, error) {
		return c.Store.SetStop(ctx, scope, stop, author, comment)
	})
}

func (s *Set) all(ctx context.Context, fn func(context.Context, Cell) (store.Result, error)) ([]CellResult, error) {
	out := make([]CellResult, len(s.cells))
	err := s.each(ctx, func(ctx context.Context, i int, c Cell) error {
		res, err := fn(ctx, c)
		out[i] = CellResult{Cell: c.Name, Result: res}
		if err != nil {
			out[i].Error = err.Error()
		}
		return err
	})
	return out, err
}

// Agent is a registration and the cell it is in.
type Agent struct {
	Cell string `json:"cell"`
	store.Agent
}

// Agents lists the registrations matching sel in every cell, merged and
// sorted by name (then cell), at most limit (zero means all).
func (s *Set) Agents(ctx context.Context, sel store.Selector, limit int) ([]Agent, error) {
	per := make([][]store.Agent, len(s.cells))
	err := s.each(ctx, func(ctx context.Context, i int, c Cell) error {
		as, err := c.Store.Agents(ctx, sel, limit)
		per[i] = as
		return err
	})
	if err != nil {
		return nil, err
	}
	var out []Agent
	for i, as := range per {
		for _, a := range as {
			out = append(out, Agent{Cell: s.cells[i].Name, Agent: a})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Cell < out[j].Cell
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	if out == nil {
		out = []Agent{}
	}
	return out, nil
}

// Count is the fleet's registrations, merged, and each cell's.
type Count struct {
	store.Count
	Cells map[string]store.Count `json:"cells"`
}

// Count counts the registrations matching sel in every cell in parallel,
// grouped by label by if set, and merges the counts.
func (s *Set) Count(ctx context.Context, sel store.Selector, by string) (Count, error) {
	per := make([]store.Count, len(s.cells))
	err := s.each(ctx, func(ctx context.Context, i int, c Cell) error {
		n, err := c.Store.Count(ctx, sel, by)
		per[i] = n
		return err
	})
	if err != nil {
		return Count{}, err
	}
	out := Count{Count: store.Count{By: by}, Cells: map[string]store.Count{}}
	for i, n := range per {
		out.Cells[s.cells[i].Name] = n
		out.Total += n.Total
		for k, v := range n.Groups {
			if out.Groups == nil {
				out.Groups = map[string]int64{}
			}
			out.Groups[k] += v
		}
	}
	return out, nil
}

// Locate finds the cell a host is registered in, asking every cell in
// parallel. A host registered in two cells (moved without its old lease
// expiring, or misconfigured) is an error naming both.
func (s *Set) Locate(ctx context.Context, host string) (string, api.Registration, error) {
	if !api.ValidName(host) {
		return "", api.Registration{}, fmt.Errorf("cells: invalid host name %q", host)
	}
	found := make([]bool, len(s.cells))
	regs := make([]api.Registration, len(s.cells))
	err := s.each(ctx, func(ctx context.Context, i int, c Cell) error {
		resp, err := c.Store.Client().Get(ctx, c.Store.Keyspace().Agent(host))
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return nil
		}
		found[i] = true
		if err := json.Unmarshal(resp.Kvs[0].Value, &regs[i]); err != nil {
			return fmt.Errorf("registration of %s: %w", host, err)
		}
		return nil
	})
	var in []string
	var reg api.Registration
	for i, f := range found {
		if f {
			in = append(in, s.cells[i].Name)
			reg = regs[i]
		}
	}
	switch {
	case len(in) == 1:
		return in[0], reg, nil
	case len(in) > 1:
		return "", api.Registration{}, fmt.Errorf("cells: host %s is registered in several cells: %v", host, in)
	case err != nil:
		return "", api.Registration{}, fmt.Errorf("cells: locating %s: %w", host, err)
	}
	return "", api.Registration{}, fmt.Errorf("%w: %s", ErrHostNotFound, host)
}

// Progress is the acknowledgement of a fleet-wide write, merged, and each
// cell's.
type Progress struct {
	Targeted     int64                     `json:"targeted"`
	Acknowledged int64                     `json:"acknowledged"`
	Cells        map[string]store.Progress `json:"cells"`
}

// Done reports whether every targeted host in every cell acknowledged.
func (p Progress) Done() bool { return p.Acknowledged == p.Targeted }

// Progress computes how far the hosts of scope acknowledged the write that
// results recorded (each cell against its own revision).
func (s *Set) Progress(ctx context.Context, scope api.Scope, results []CellResult) (Progress, error) {
	out := Progress{Cells: map[string]store.Progress{}}
	var mu sync.Mutex
	err := s.each(ctx, func(ctx context.Context, _ int, c Cell) error {
		for _, r := range results {
			if r.Cell != c.Name || r.Error != "" {
				continue
			}
			p, err := c.Store.Progress(ctx, scope, r.Result.Revision)
			if err != nil {
				return err
			}
			mu.Lock()
			out.Cells[c.Name] = p
			out.Targeted += p.Targeted
			out.Acknowledged += p.Acknowledged
			mu.Unlock()
		}
		return nil
	})
	return out, err
}
