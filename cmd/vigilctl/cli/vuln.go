package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/vuln/osv"
)

// vulnCmds are the vulnerability commands (issue 7).
func (g *globals) vulnCmds() []*cobra.Command {
	c := &cobra.Command{Use: "vuln", Short: "Fleet vulnerability search over the hosts' package inventories"}
	c.AddCommand(g.vulnHostsCmd(), g.vulnHostCmd(), g.vulnPackageCmd(), g.vulnTopCmd(), g.vulnStatsCmd(), g.vulnReloadCmd())
	return []*cobra.Command{c}
}

func severity(s osv.Severity) string {
	if s.Score > 0 {
		return fmt.Sprintf("%s (%.1f)", s.Level, s.Score)
	}
	return s.Level.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (g *globals) vulnHostsCmd() *cobra.Command {
	var limit int
	c := &cobra.Command{
		Use: "hosts CVE-ID", Short: "Hosts exposed to a CVE (or advisory ID), with package, installed and fixed version",
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			if limit < 0 {
				return fmt.Errorf("--limit must not be negative (got %d)", limit)
			}
			res, err := cl.VulnHosts(g.ctx(c), args[0], limit)
			if err != nil {
				return err
			}
			return g.emit(res, func(w io.Writer) {
				fmt.Fprintf(w, "%s: %d hosts, severity %s, advisories %s\n", res.ID, res.HostCount, severity(res.Severity), strings.Join(res.Advisories, ", "))
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "HOST\tPACKAGE\tINSTALLED\tFIXED\tADVISORY")
				for _, inv := range res.Inventories {
					for _, h := range inv.Hosts {
						for _, hit := range inv.Hits {
							fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", h, pkgName(hit.Package, hit.Binaries), hit.Installed, orDash(hit.Fixed), hit.Advisory)
						}
					}
				}
				_ = tw.Flush()
				if res.Truncated {
					fmt.Fprintf(w, "(%d of %d hosts shown; --limit 0 shows all)\n", res.Shown, res.HostCount)
				}
			})
		},
	}
	c.Flags().IntVar(&limit, "limit", 1000, "list at most this many hosts (0: all); the count is always the full one")
	return c
}

// pkgName shows a source package with the binaries built from it.
func pkgName(pkg string, bins []string) string {
	if len(bins) == 0 || (len(bins) == 1 && bins[0] == pkg) {
		return pkg
	}
	return pkg + " (" + strings.Join(bins, ",") + ")"
}

func (g *globals) vulnHostCmd() *cobra.Command {
	return &cobra.Command{
		Use: "host NAME", Short: "A host's vulnerable packages, most severe first", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			res, err := cl.VulnHost(g.ctx(c), args[0])
			if err != nil {
				return err
			}
			return g.emit(res, func(w io.Writer) {
				partial := ""
				if res.Partial {
					partial = " (inventory partial: hits may be missing)"
				}
				fmt.Fprintf(w, "%s: %s, %d packages, %d hits, inventory %s%s\n", res.Host, res.OS, res.Packages, len(res.Hits), res.Digest, partial)
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SEVERITY\tCVES\tPACKAGE\tINSTALLED\tFIXED\tADVISORY")
				for _, h := range res.Hits {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", severity(h.Severity), orDash(strings.Join(h.CVEs, ",")),
						pkgName(h.Package, h.Binaries), h.Installed, orDash(h.Fixed), h.Advisory)
				}
				_ = tw.Flush()
			})
		},
	}
}

func (g *globals) vulnPackageCmd() *cobra.Command {
	var below string
	c := &cobra.Command{
		Use: "package NAME", Short: "Installed versions of a binary package across the fleet", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			res, err := cl.VulnPackage(g.ctx(c), args[0], below)
			if err != nil {
				return err
			}
			return g.emit(res, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "VERSION\tECOSYSTEM\tINVENTORIES\tHOSTS")
				for _, v := range res.Versions {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", v.Version, v.Ecosystem, v.Inventories, v.Hosts)
				}
				_ = tw.Flush()
			})
		},
	}
	c.Flags().StringVar(&below, "below", "", "only versions older than this one (by each ecosystem's rules)")
	return c
}

func (g *globals) vulnTopCmd() *cobra.Command {
	var n int
	c := &cobra.Command{
		Use: "top", Short: "CVEs affecting the most hosts, the most severe first among equals", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if n < 1 || n > 10000 {
				return fmt.Errorf("-n must be between 1 and 10000 (got %d)", n)
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			res, err := cl.VulnTop(g.ctx(c), n)
			if err != nil {
				return err
			}
			return g.emit(res, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "CVE\tSEVERITY\tHOSTS\tINVENTORIES")
				for _, cv := range res.CVEs {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", cv.ID, severity(cv.Severity), cv.Hosts, cv.Inventories)
				}
				_ = tw.Flush()
			})
		},
	}
	c.Flags().IntVarP(&n, "number", "n", 20, "how many CVEs")
	return c
}

func (g *globals) vulnStatsCmd() *cobra.Command {
	return &cobra.Command{
		Use: "stats", Short: "What the server's vulnerability index holds and has ingested", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			st, err := cl.VulnStats(g.ctx(c))
			if err != nil {
				return err
			}
			return g.emit(st, func(w io.Writer) {
				x := st.Index
				fmt.Fprintf(w, "hosts:        %d\ninventories:  %d\nadvisories:   %d (%d affected entries)\nhits:         %d\n",
					x.Hosts, x.Inventories, x.Advisories, x.Affected, x.Hits)
				fmt.Fprintf(w, "digests:      %d received, %d known\nuploads:      %d accepted (%d new), %d rejected\npruned hosts: %d\n",
					st.DigestsReceived, st.DigestsKnown, st.Uploads, st.UploadsNew, st.UploadsRejected, st.HostsPruned)
				a := st.Advisories
				fmt.Fprintf(w, "osv import:   %s: %d files, %d added, %d replaced, %d ignored, %d skipped\n",
					orDash(strings.Join(a.Paths, ",")), a.Files, a.Added, a.Replaced, a.Ignored, a.Skipped)
				for _, e := range a.Errors {
					fmt.Fprintf(w, "  skipped: %s\n", e)
				}
			})
		},
	}
}

func (g *globals) vulnReloadCmd() *cobra.Command {
	return &cobra.Command{
		Use: "reload", Short: "Make the server import its OSV advisories again (admin)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			imp, err := cl.VulnReload(g.ctx(c))
			if err != nil {
				return err
			}
			return g.emit(imp, func(w io.Writer) {
				fmt.Fprintf(w, "imported %d files: %d added, %d replaced, %d ignored, %d skipped\n", imp.Files, imp.Added, imp.Replaced, imp.Ignored, imp.Skipped)
				for _, e := range imp.Errors {
					fmt.Fprintf(w, "  skipped: %s\n", e)
				}
			})
		},
	}
}
