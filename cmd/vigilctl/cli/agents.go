package cli

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/store"
)

func (g *globals) agentsCmd() *cobra.Command {
	c := &cobra.Command{Use: "agents", Short: "List and count registered hosts"}
	var labels []string
	var limit int
	var broken bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List registered hosts",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			cas, err := cl.AgentsCells(g.ctx(c), labels, limit)
			if err != nil {
				return err
			}
			if broken {
				kept := cas[:0]
				for _, a := range cas {
					if brokenPlugins(a.Plugins) != "" {
						kept = append(kept, a)
					}
				}
				cas = kept
			}
			// The CELL column (and "cell" in JSON) only when the server
			// manages several cells.
			withCell := false
			as := make([]store.Agent, len(cas))
			for i, a := range cas {
				as[i], withCell = a.Agent, withCell || a.Cell != ""
			}
			var js any = as
			if withCell {
				js = cas
			}
			return g.emit(js, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				if withCell {
					fmt.Fprint(tw, "CELL\t")
				}
				fmt.Fprintln(tw, "NAME\tVERSION\tPLATFORM\tLABELS\tAPPLIED\tSTOPPED\tUPDATED\tNOTE")
				for i, a := range as {
					if withCell {
						fmt.Fprintf(tw, "%s\t", cas[i].Cell)
					}
					note := a.Applied.Error
					if b := brokenPlugins(a.Plugins); b != "" {
						note = strings.TrimPrefix(note+"; "+b, "; ")
					}
					if a.Mismatch != "" {
						note = "MISMATCH: " + a.Mismatch
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%t\t%s\t%s\n", a.Name, a.Version, platform(a.Registration), joinLabels(a.Labels),
						a.Applied.Revision, a.Stopped, a.UpdatedAt.Format(time.RFC3339), note)
				}
				_ = tw.Flush()
			})
		},
	}
	ls.Flags().StringArrayVar(&labels, "label", nil, "only hosts with label k=v (repeatable, all must match)")
	ls.Flags().IntVar(&limit, "limit", 0, "list at most this many (0: all)")
	ls.Flags().BoolVar(&broken, "broken", false, "only hosts with a plugin that is not running: breaker open, quarantined or failed (the NOTE says which and why)")
	var clabels []string
	var by string
	count := &cobra.Command{
		Use:   "count",
		Short: "Count registered hosts, optionally by a label",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			n, err := cl.Count(g.ctx(c), clabels, by)
			if err != nil {
				return err
			}
			return g.emit(n, func(w io.Writer) {
				if by == "" {
					fmt.Fprintln(w, n.Total)
					return
				}
				keys := make([]string, 0, len(n.Groups))
				for k := range n.Groups {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "%s\tHOSTS\n", strings.ToUpper(by))
				for _, k := range keys {
					name := k
					if name == "" {
						name = "(none)"
					}
					fmt.Fprintf(tw, "%s\t%d\n", name, n.Groups[k])
				}
				fmt.Fprintf(tw, "total\t%d\n", n.Total)
				_ = tw.Flush()
			})
		},
	}
	count.Flags().StringArrayVar(&clabels, "label", nil, "only hosts with label k=v (repeatable)")
	count.Flags().StringVar(&by, "by", "", "group the count by this label")
	c.AddCommand(ls, count)
	return c
}

// platform is a registration's "os/arch", "-" from an agent that does not
// report it.
func platform(r api.Registration) string {
	if r.OS == "" || r.Arch == "" {
		return "-"
	}
	return api.Platform(r.OS, r.Arch)
}

func joinLabels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

// brokenPlugins names each plugin of a registration that is not running
// normally, with its breaker or last error: "procmon: open: cpu (...)".
func brokenPlugins(ps map[string]api.PluginStatus) string {
	names := make([]string, 0, len(ps))
	for n := range ps {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []string
	for _, n := range names {
		p := ps[n]
		switch {
		case p.Breaker != "" && p.Breaker != "closed":
			out = append(out, n+": breaker "+p.Breaker)
		case p.State == "quarantined" || p.State == "failed":
			out = append(out, n+": "+p.State+": "+p.LastError)
		}
	}
	return strings.Join(out, "; ")
}
