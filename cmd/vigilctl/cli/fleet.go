package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/cells"
	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/server/store"
	"golang.org/x/sys/unix"
)

// WaitResult is the -o json output of fleet stop/resume.
type WaitResult struct {
	Scope    string          `json:"scope"`
	Stop     bool            `json:"stop"`
	Seq      int64           `json:"seq"`
	Revision int64           `json:"revision"`
	Progress *store.Progress `json:"progress,omitempty"`
	Elapsed  string          `json:"elapsed,omitempty"`
	Complete bool            `json:"complete"`
	// Cells and CellProgress are each cell's write and acknowledgement
	// when the server manages several cells.
	Cells        []cells.CellResult        `json:"cells,omitempty"`
	CellProgress map[string]store.Progress `json:"cell_progress,omitempty"`
}

func (g *globals) fleetCmd() *cobra.Command {
	c := &cobra.Command{Use: "fleet", Short: "Emergency stop and resume"}
	c.AddCommand(g.stopCmd(true), g.stopCmd(false))
	return c
}

func (g *globals) stopCmd(stop bool) *cobra.Command {
	var scope, comment string
	var wait bool
	var timeout, interval time.Duration
	use, short := "resume", "Clear the stop flag of a scope (a wider scope's stop still applies)"
	if stop {
		use, short = "stop", "Stop every plugin in a scope (one write; hosts keep their lease and watches)"
	}
	c := &cobra.Command{
		Use: use, Short: short, Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			sc, err := api.ParseScope(scope)
			if err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			ctx := g.ctx(c)
			res, err := cl.StopCells(ctx, sc, stop, comment)
			if err != nil {
				return err
			}
			out := WaitResult{Scope: res.Scope, Stop: stop, Seq: res.Seq, Revision: res.Revision, Complete: !wait, Cells: res.Cells}
			if !wait {
				return g.emit(out, func(w io.Writer) {
					if len(res.Cells) == 0 {
						fmt.Fprintf(w, "%s: %s written as seq %d at revision %d\n", res.Scope, use, res.Seq, res.Revision)
					}
					for _, r := range res.Cells {
						fmt.Fprintf(w, "%s: %s written in cell %s as seq %d at revision %d\n", res.Scope, use, r.Cell, r.Result.Seq, r.Result.Revision)
					}
				})
			}
			bar := g.progressBar()
			start := time.Now()
			deadline := start.Add(timeout)
			var cp httpapi.CellsProgress
			for {
				cp, err = cl.ProgressCells(ctx, sc, res)
				if err != nil {
					bar.done()
					return err
				}
				bar.draw(cp.Progress, time.Since(start))
				p := cp.Progress
				if p.Done() || !time.Now().Before(deadline) {
					break
				}
				select {
				case <-ctx.Done():
					bar.done()
					return ctx.Err()
				case <-time.After(interval):
				}
			}
			bar.done()
			p := cp.Progress
			out.CellProgress = cp.Cells
			out.Progress, out.Elapsed, out.Complete = &p, time.Since(start).Round(time.Millisecond).String(), p.Done()
			if err := g.emit(out, func(w io.Writer) {
				fmt.Fprintf(w, "%s: %s at revision %d: %d/%d hosts acknowledged in %s\n", res.Scope, use, res.Revision,
					p.Acknowledged, p.Targeted, out.Elapsed)
				for _, r := range res.Cells {
					c := cp.Cells[r.Cell]
					fmt.Fprintf(w, "  cell %s: revision %d: %d/%d acknowledged\n", r.Cell, r.Result.Revision, c.Acknowledged, c.Targeted)
				}
				if p.Targeted == 0 {
					fmt.Fprintf(w, "no registered host is targeted by %s; hosts that register later read the new state first\n", res.Scope)
				}
				if p.StragglerCount > 0 {
					fmt.Fprintf(w, "%d stragglers:\n", p.StragglerCount)
					for _, s := range p.Stragglers {
						fmt.Fprintf(w, "  %s\n", s)
					}
					if more := p.StragglerCount - int64(len(p.Stragglers)); more > 0 {
						fmt.Fprintf(w, "  ... and %d more\n", more)
					}
				}
			}); err != nil {
				return err
			}
			if !p.Done() {
				return fmt.Errorf("%w: %d of %d hosts did not acknowledge revision %d within %s",
					ErrNotAcknowledged, p.StragglerCount, p.Targeted, res.Revision, timeout)
			}
			return nil
		},
	}
	scopeFlag(c, &scope)
	c.Flags().StringVar(&comment, "comment", "", "why, recorded in history")
	c.Flags().BoolVar(&wait, "wait", false, "wait until every targeted host acknowledged, showing progress")
	c.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "how long --wait waits")
	c.Flags().DurationVar(&interval, "poll", 250*time.Millisecond, "how often --wait asks for progress")
	return c
}

// bar draws a live progress line on a terminal, and nothing otherwise.
type bar struct {
	w   io.Writer
	tty bool
	n   int
}

func (g *globals) progressBar() *bar {
	b := &bar{w: g.streams.Err}
	if f, ok := g.streams.Err.(interface{ Fd() uintptr }); ok {
		_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
		b.tty = err == nil
	}
	return b
}

func (b *bar) draw(p store.Progress, elapsed time.Duration) {
	if !b.tty {
		return
	}
	const width = 30
	filled := 0
	if p.Targeted > 0 {
		filled = int(int64(width) * p.Acknowledged / p.Targeted)
	}
	line := fmt.Sprintf("\r[%s%s] %d/%d acknowledged  %s", strings.Repeat("#", filled), strings.Repeat("-", width-filled),
		p.Acknowledged, p.Targeted, elapsed.Round(100*time.Millisecond))
	b.n = len(line)
	fmt.Fprint(b.w, line)
}

func (b *bar) done() {
	if b.tty && b.n > 0 {
		fmt.Fprint(b.w, "\r"+strings.Repeat(" ", b.n)+"\r")
	}
}
