package client

import (
	"context"
	"net/url"
	"strconv"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/cells"
	"github.com/vigil-hids/vigil/server/httpapi"
)

// AgentsCells is Agents with each host's cell; Cell is "" when the server
// manages one cell.
func (c *Client) AgentsCells(ctx context.Context, labels []string, limit int) ([]cells.Agent, error) {
	var out struct {
		Agents []cells.Agent `json:"agents"`
	}
	q := url.Values{"label": labels}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return out.Agents, c.do(ctx, "GET", "/v1/agents", q, nil, &out)
}

// StopCells is Stop with each cell's result when the server manages
// several cells (Cells is empty with one).
func (c *Client) StopCells(ctx context.Context, scope api.Scope, stop bool, comment string) (httpapi.CellsResult, error) {
	var out httpapi.CellsResult
	q := scopeQ(scope)
	if comment != "" {
		q.Set("comment", comment)
	}
	path := "/v1/fleet/resume"
	if stop {
		path = "/v1/fleet/stop"
	}
	return out, c.do(ctx, "POST", path, q, nil, &out)
}

// ProgressCells reports acknowledgement of a stop or resume: of every
// cell's revision in res.Cells, or of res.Revision with one cell (Cells of
// the answer is then empty).
func (c *Client) ProgressCells(ctx context.Context, scope api.Scope, res httpapi.CellsResult) (httpapi.CellsProgress, error) {
	var out httpapi.CellsProgress
	q := scopeQ(scope)
	q.Set("revision", strconv.FormatInt(res.Revision, 10))
	for _, r := range res.Cells {
		if r.Error == "" {
			q.Add("cell_revision", r.Cell+":"+strconv.FormatInt(r.Result.Revision, 10))
		}
	}
	return out, c.do(ctx, "GET", "/v1/fleet/progress", q, nil, &out)
}
