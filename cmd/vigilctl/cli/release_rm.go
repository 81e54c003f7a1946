package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/server/client"
	"github.com/vigil-hids/vigil/server/rollout"
)

// releaseRmCmd is `release rm PLUGIN VERSION [--platform OS/ARCH] --comment C`.
func (g *globals) releaseRmCmd() *cobra.Command {
	var platform, comment string
	c := &cobra.Command{
		Use:   "rm PLUGIN VERSION",
		Short: "Remove a published release (broken or compromised) from the mirror, keeping a record of who, when and why",
		Long: `rm deletes the signed manifests of PLUGIN VERSION (every platform, or only
--platform OS/ARCH) from /hids/releases/, so hosts no longer find it, and
writes a removal record (who, when, --comment, the removed manifest) under
/hids/releases-removed/ (release ls --removed). It is refused while any
desired-state document (fleet, group or host) asks for the version, as its
version or as the "from" of a partial rollout: move those scopes off it
first (rollout set). The version may later be published again only with the
manifest that was removed (same binary), which restores it; a version names
one binary per platform forever. The artifact stays in the store until
release gc finds no manifest naming it. Admins only.`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			goos, arch := "", ""
			if platform != "" {
				var ok bool
				goos, arch, ok = strings.Cut(platform, "/")
				if !ok || goos == "" || arch == "" || strings.Contains(arch, "/") {
					return fmt.Errorf("--platform must be OS/ARCH, such as linux/arm64 (got %q)", platform)
				}
			}
			if strings.TrimSpace(comment) == "" {
				return fmt.Errorf("--comment is required: say why %s %s is removed (kept in the removal record)", args[0], args[1])
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			res, err := cl.RemoveRelease(g.ctx(c), args[0], args[1], goos, arch, comment)
			if err != nil {
				return err
			}
			return g.emit(res, func(w io.Writer) {
				for _, rm := range res.Removed {
					fmt.Fprintf(w, "%s %s %s/%s: removed at revision %d (sha256:%s); record kept, see release ls --removed\n",
						rm.Plugin, rm.Version, rm.OS, rm.Arch, rm.Revision, rm.SHA256)
				}
			})
		},
	}
	c.Flags().StringVar(&platform, "platform", "", "remove only this platform (OS/ARCH); default every platform of the version")
	c.Flags().StringVar(&comment, "comment", "", "why (required; kept in the removal record)")
	return c
}

// listRemoved prints the removal records (release ls --removed).
func (g *globals) listRemoved(c *cobra.Command, cl *client.Client, plugin string) error {
	rms, err := cl.RemovedReleases(g.ctx(c), plugin)
	if err != nil {
		return err
	}
	return g.emit(rms, func(w io.Writer) { printRemoved(w, rms) })
}

func printRemoved(w io.Writer, rms []rollout.Removal) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PLUGIN\tVERSION\tPLATFORM\tSHA256\tREMOVED\tBY\tCOMMENT")
	for _, r := range rms {
		sha := r.SHA256
		if len(sha) > 12 {
			sha = sha[:12]
		}
		at := ""
		if !r.RemovedAt.IsZero() {
			at = r.RemovedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s/%s\t%s\t%s\t%s\t%s\n", r.Plugin, r.Version, r.OS, r.Arch, sha, at, r.RemovedBy, r.Comment)
	}
	_ = tw.Flush()
}

// releaseGCCmd is `release gc [--dry-run] [--grace 1h]`.
func (g *globals) releaseGCCmd() *cobra.Command {
	var dryRun bool
	var grace time.Duration
	c := &cobra.Command{
		Use:   "gc",
		Short: "Remove artifacts no published manifest names, older than --grace, from the server's artifact store",
		Long: `gc asks the server to remove from its artifact store every binary whose
sha256 no manifest under /hids/releases/ names and that was last written
more than --grace ago (publishing stores the binary before it writes the
manifest, so a younger one may be a publish in flight). Removed releases'
binaries are collected too; a removal record does not keep them. With
--dry-run nothing is removed. The store is the answering replica's own
(--artifact-dir, default DATA_DIR/artifacts): run gc against each replica.
Admins only.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if grace != 0 && grace < time.Minute {
				return fmt.Errorf("--grace must be at least 1m, so a publish in flight keeps its binary (got %s)", grace)
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			rep, err := cl.CollectArtifacts(g.ctx(c), grace, dryRun)
			if err != nil {
				return err
			}
			return g.emit(rep, func(w io.Writer) {
				verb := "removed"
				if rep.DryRun {
					verb = "would remove"
				}
				for _, e := range rep.Removed {
					fmt.Fprintf(w, "%s sha256:%s (%d bytes, last written %s)\n", verb, e.SHA256, e.Length, e.Modified.UTC().Format(time.RFC3339))
				}
				for _, e := range rep.Young {
					fmt.Fprintf(w, "kept sha256:%s (%d bytes): named by no manifest, but written within the grace period %s\n", e.SHA256, e.Length, rep.Grace)
				}
				fmt.Fprintf(w, "%s %d artifacts, %d bytes; kept %d named by a manifest (%d bytes) and %d within the grace period\n",
					verb, len(rep.Removed), rep.BytesFreed, rep.Named, rep.NamedBytes, len(rep.Young))
			})
		},
	}
	c.Flags().BoolVar(&dryRun, "dry-run", false, "report what would be removed, remove nothing")
	c.Flags().DurationVar(&grace, "grace", time.Hour, "keep unnamed artifacts written more recently than this (at least 1m)")
	return c
}
