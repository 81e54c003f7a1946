package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/metrics"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultCompactInterval is how often the leader compacts every cell's
// etcd keyspace, and how far behind a watcher may fall before it is cut
// off (it then reads afresh, as host/control does).
const DefaultCompactInterval = 5 * time.Minute

// CompactOff as Config.CompactInterval turns compaction off (for an
// external etcd that compacts itself with --auto-compaction-retention).
const CompactOff time.Duration = -1

// compactRoundTimeout bounds one round's etcd calls.
const compactRoundTimeout = 30 * time.Second

// compactCell is one cell's etcd client.
type compactCell struct {
	name string
	cli  *clientv3.Client
	// compact, if set, compacts instead of cli (the embedded etcd,
	// in-process: over gRPC with authentication on only root may).
	compact func(ctx context.Context, rev int64) error
}

func (c compactCell) compactAt(ctx context.Context, rev int64) error {
	if c.compact != nil {
		return c.compact(ctx, rev)
	}
	_, err := c.cli.Compact(ctx, rev)
	return err
}

// compactor is the leader's compaction job, after the Kubernetes apiserver:
// every interval it reads each cell's current revision and compacts the
// cell at the revision it read one interval earlier. A watcher (or a paged
// read) less than one interval behind is never cut off; the history that
// must outlive compaction is kept as values under /hids/history/. The
// compaction is etcd's logical one (not physical: the call does not wait
// for the backend to free the pages). Each round also reads etcd's alarms
// and warns about NOSPACE, which makes the cell read-only.
type compactor struct {
	interval time.Duration
	cells    []compactCell
	probeKey string // any key: reading it returns the current revision
	log      *slog.Logger
	m        *metrics.Compaction
}

// run compacts every cell, each in its own goroutine so that a slow or
// broken cell delays no other, until ctx ends.
func (c *compactor) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, cell := range c.cells {
		c.m.Cell(cell.name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.runCell(ctx, cell)
		}()
	}
	wg.Wait()
}

func (c *compactor) runCell(ctx context.Context, cell compactCell) {
	log := c.log.With("cell", cell.name)
	// Alarms seen by a replica that no longer leads are not current.
	defer c.m.Alarms.DeletePartialMatch(prometheus.Labels{"cell": cell.name})
	t := time.NewTicker(c.interval)
	defer t.Stop()
	var prev int64 // the revision read one interval ago; 0: none yet
	for {
		prev = c.round(ctx, log, cell, prev)
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// round reads the cell's alarms and current revision, compacts at prev (if
// any) and returns the revision to compact at next interval.
func (c *compactor) round(ctx context.Context, log *slog.Logger, cell compactCell, prev int64) int64 {
	rctx, cancel := context.WithTimeout(ctx, min(c.interval, compactRoundTimeout))
	defer cancel()
	c.alarms(rctx, log, cell)
	resp, err := cell.cli.Get(rctx, c.probeKey, clientv3.WithCountOnly())
	if err != nil {
		if ctx.Err() == nil {
			c.m.Failures.WithLabelValues(cell.name).Inc()
			log.Warn("etcd compaction: reading the current revision failed; retrying next interval",
				"error", err.Error(), "interval", c.interval.String())
		}
		// prev only grows older, so it stays safe to compact at.
		return prev
	}
	cur := resp.Header.Revision
	if prev == 0 {
		return cur
	}
	if cur < prev {
		// The cell's etcd went back in time (restored from a snapshot,
		// or replaced): what was read before means nothing now.
		log.Warn("etcd compaction: the cell's revision went backwards (etcd restored or replaced?); starting over",
			"revision", cur, "previous_revision", prev)
		return cur
	}
	err = cell.compactAt(rctx, prev)
	switch {
	case err == nil || errors.Is(err, rpctypes.ErrCompacted):
		// ErrCompacted: someone (etcd's own auto-compaction, an operator,
		// an earlier leader) already compacted past prev, so the keyspace
		// is where we wanted it.
		c.m.Compactions.WithLabelValues(cell.name).Inc()
		c.m.Revision.WithLabelValues(cell.name).Set(float64(prev))
		log.Info("etcd compacted", "revision", prev, "current_revision", cur, "already", err != nil)
	case ctx.Err() != nil:
		return prev
	case errors.Is(err, rpctypes.ErrPermissionDenied):
		c.m.Failures.WithLabelValues(cell.name).Inc()
		log.Error("etcd refused the compaction: with authentication on, etcd lets only users with the root role compact; "+
			"grant it to the server's etcd user (etcdctl user grant-role vigil-server root), or let etcd compact itself "+
			"(--auto-compaction-mode=periodic --auto-compaction-retention=5m) and set --compact-interval 0",
			"revision", prev, "error", err.Error())
	default:
		c.m.Failures.WithLabelValues(cell.name).Inc()
		log.Warn("etcd compaction failed; retrying next interval", "revision", prev, "error", err.Error(),
			"interval", c.interval.String())
	}
	return cur
}

// alarms records the cell's active etcd alarms and warns about each. A
// failed read is logged at debug level only: the health check reports
// etcd that does not answer.
func (c *compactor) alarms(ctx context.Context, log *slog.Logger, cell compactCell) {
	resp, err := cell.cli.AlarmList(ctx)
	if err != nil {
		if ctx.Err() == nil {
			log.Debug("reading etcd alarms failed", "error", err.Error())
		}
		return
	}
	c.m.Alarms.DeletePartialMatch(prometheus.Labels{"cell": cell.name})
	for _, a := range resp.Alarms {
		name := a.Alarm.String()
		c.m.Alarms.WithLabelValues(cell.name, name).Set(1)
		if name == "NOSPACE" {
			log.Warn("etcd raised NOSPACE: the cell's backend reached its quota and the cell is read-only "+
				"(no desired-state write, not even an emergency stop, can be made); compaction alone does not shrink the file: "+
				"defragment every member (etcdctl defrag), then clear the alarm (etcdctl alarm disarm)",
				"alarm", name, "member", fmt.Sprintf("%x", a.MemberID))
		} else {
			log.Warn("etcd reports an alarm", "alarm", name, "member", fmt.Sprintf("%x", a.MemberID))
		}
	}
}

// compactor builds the compaction job over every cell: the default cell
// and the extra cells (cfg.Cells, in order).
func (s *Server) compactor() *compactor {
	list := []compactCell{{name: s.cfg.cellName(), cli: s.cli}}
	if s.embed != nil {
		list[0].compact = s.embed.Compact
	}
	for i, cli := range s.cellCli {
		list = append(list, compactCell{name: s.cfg.Cells[i].Name, cli: cli})
	}
	return &compactor{interval: s.cfg.CompactInterval, cells: list, probeKey: s.ks.ScopeKey(api.Scope{Kind: api.ScopeFleet}),
		log: s.log.With("job", "compaction"), m: s.compact}
}
