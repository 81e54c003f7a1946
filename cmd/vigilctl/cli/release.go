package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/server/rollout"
)

// releaseCmds are the release and rollout commands.
func (g *globals) releaseCmds() []*cobra.Command {
	return []*cobra.Command{g.releaseCmd(), g.rolloutCmd()}
}

func (g *globals) releaseCmd() *cobra.Command {
	c := &cobra.Command{Use: "release", Short: "Signed releases: publish a bundle, list what is published, remove a release, collect unused artifacts"}
	var timeout time.Duration
	publish := &cobra.Command{
		Use:   "publish BUNDLE_DIR",
		Short: "Upload a signed bundle (vigil-sign sign): the binary to the artifact store, the manifest to etcd",
		Long: `publish streams BUNDLE_DIR/manifest.json and BUNDLE_DIR/binary to the server.
The server checks the binary's length and sha256 against the manifest as it
arrives, stores it by sha256, and writes the signed manifest unchanged to
/hids/releases/{plugin}/{version}/{os}/{arch}, the manifest's platform. A
version carries one manifest per platform: publish one bundle per
platform (linux/amd64, linux/arm64, ...), each with its own binary. A
version names one binary per platform forever: another manifest for a
published version and platform is refused (the same manifest with more
signatures is accepted). Hosts read the manifest of their own platform and
verify the signatures themselves; the server is only a mirror.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(g.ctx(c), timeout)
			defer cancel()
			res, err := cl.Publish(ctx, args[0])
			if err != nil {
				return err
			}
			return g.emit(res, func(w io.Writer) {
				r := res.Release
				stored := "stored"
				if !res.Artifact.Created {
					stored = "already stored"
				}
				fmt.Fprintf(w, "%s %s %s/%s: %s at revision %d; artifact sha256:%s (%d bytes) %s\n",
					r.Plugin, r.Version, r.OS, r.Arch, r.Result, r.Revision, res.Artifact.SHA256, res.Artifact.Length, stored)
			})
		},
	}
	publish.Flags().DurationVar(&timeout, "upload-timeout", 10*time.Minute, "bound on the whole upload")

	var removed bool
	ls := &cobra.Command{
		Use: "ls [PLUGIN]", Short: "List published releases, one row per platform (--removed: the removed ones)", Args: cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			plugin := ""
			if len(args) == 1 {
				plugin = args[0]
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			if removed {
				return g.listRemoved(c, cl, plugin)
			}
			rs, err := cl.Releases(g.ctx(c), plugin)
			if err != nil {
				return err
			}
			return g.emit(rs, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "PLUGIN\tVERSION\tPLATFORM\tLENGTH\tSHA256\tEXPIRES\tSIGNERS")
				for _, r := range rs {
					sha := r.SHA256
					if len(sha) > 12 {
						sha = sha[:12]
					}
					exp := ""
					if !r.Expires.IsZero() {
						exp = r.Expires.UTC().Format(time.RFC3339)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s/%s\t%d\t%s\t%s\t%s\n", r.Plugin, r.Version, r.OS, r.Arch, r.Length, sha, exp,
						strings.Join(r.Signers, ","))
				}
				_ = tw.Flush()
			})
		},
	}
	ls.Flags().BoolVar(&removed, "removed", false, "list the removed releases (release rm): who removed them, when and why")
	c.AddCommand(publish, ls, g.releaseRmCmd(), g.releaseGCCmd())
	return c
}

func (g *globals) rolloutCmd() *cobra.Command {
	c := &cobra.Command{Use: "rollout", Short: "Move a plugin's (or vigil-host's) desired version: set, status, undo"}
	var scope, comment string
	var percent int
	var requirePlatforms bool
	set := &cobra.Command{
		Use:   "set PLUGIN VERSION",
		Short: "Ask the hosts of a scope to run a published version, optionally on a percentage of them",
		Long: `set writes PLUGIN's desired version at --scope, keeping the rest of the
scope's document, as one versioned write recorded in history. With
--percent P below 100 only the hosts whose stable bucket (a hash of host
and plugin name) is below P take it; the others keep the version the scope
asks for now. Raising P later only adds hosts. PLUGIN vigil-host sets the
host agent's own version. The version must be published (release ls) for
at least one platform; the answer names the platforms it is published for,
and hosts of any other platform report the update failed until it is: the
registered hosts the version targets are counted by platform (the os/arch
their agent reports; "unknown" for older agents), and each platform among
them the version is not published for is a warning (on stderr, and in
"warnings" in JSON). --require-platforms refuses the rollout instead.
A version lower than the one the hosts are asked to run now must be a
signed rollback release (1.2.0+rollback.N, vigil-sign sign --rollback);
lowering --percent moves hosts back to the rollback release of the other
version, and is refused with the commands to make one if none exists.`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			sc, err := api.ParseScope(scope)
			if err != nil {
				return err
			}
			if percent < 1 || percent > 100 {
				return fmt.Errorf("--percent must be between 1 and 100 (got %d)", percent)
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			res, err := cl.RolloutSet(g.ctx(c), sc, args[0], httpapi.RolloutRequest{Version: args[1], Percent: percent, Comment: comment,
				RequirePlatforms: requirePlatforms})
			if err != nil {
				return err
			}
			g.warn(res.Warnings)
			return g.emit(res, func(w io.Writer) { printSet(w, res) })
		},
	}
	scopeFlag(set, &scope)
	set.Flags().IntVar(&percent, "percent", 100, "share of the scope's hosts (1..100), picked by a stable hash")
	set.Flags().StringVar(&comment, "comment", "", "why, recorded in history")
	set.Flags().BoolVar(&requirePlatforms, "require-platforms", false, "refuse the rollout when hosts it targets run a platform the version is not published for (default: warn)")

	undo := &cobra.Command{
		Use:   "undo PLUGIN",
		Short: "Restore PLUGIN's previous desired version at a scope, from its history",
		Long: `undo finds the newest history record of --scope whose version (and rollout)
of PLUGIN differs from the current one and writes it back, changing
nothing else in the document. It is a new versioned write: a second undo
goes back to where the first started. Hosts refuse a lower version unless
its manifest is a signed rollback, so when undo moves hosts down it writes
the newest published rollback release of that version (1.2.0+rollback.N:
the same binary, signed with vigil-sign sign --rollback), and without one
it refuses and prints the commands that make one. Like set, it warns about
the targeted hosts of a platform the restored version is not published for
(--require-platforms refuses instead).`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			sc, err := api.ParseScope(scope)
			if err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			res, err := cl.RolloutUndo(g.ctx(c), sc, args[0], comment, requirePlatforms)
			if err != nil {
				return err
			}
			g.warn(res.Warnings)
			return g.emit(res, func(w io.Writer) { printSet(w, res) })
		},
	}
	scopeFlag(undo, &scope)
	undo.Flags().StringVar(&comment, "comment", "", "why, recorded in history")
	undo.Flags().BoolVar(&requirePlatforms, "require-platforms", false, "refuse the undo when hosts it targets run a platform the restored version is not published for (default: warn)")

	var watch bool
	var interval time.Duration
	var count int
	status := &cobra.Command{
		Use:   "status PLUGIN",
		Short: "Hosts per running version and update state, failures with reasons (--watch refreshes)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			sc, err := api.ParseScope(scope)
			if err != nil {
				return err
			}
			if interval < 100*time.Millisecond {
				return fmt.Errorf("--interval must be at least 100ms (got %s)", interval)
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			ctx := g.ctx(c)
			clear := watch && g.output == "text" && isTerminal(g.streams.Out)
			for n := 1; ; n++ {
				st, err := cl.RolloutStatus(ctx, sc, args[0])
				if err != nil {
					return err
				}
				if clear {
					fmt.Fprint(g.streams.Out, "\x1b[H\x1b[2J")
				}
				if err := g.emit(st, func(w io.Writer) { printStatus(w, st) }); err != nil {
					return err
				}
				if !watch || (count > 0 && n >= count) {
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(interval):
				}
				if !clear && g.output == "text" {
					fmt.Fprintln(g.streams.Out)
				}
			}
		},
	}
	scopeFlag(status, &scope)
	status.Flags().BoolVarP(&watch, "watch", "w", false, "refresh until interrupted")
	status.Flags().DurationVar(&interval, "interval", time.Second, "refresh interval of --watch")
	status.Flags().IntVar(&count, "count", 0, "with --watch, stop after this many refreshes (0: never)")

	c.AddCommand(set, status, undo)
	return c
}

func printSet(w io.Writer, res rollout.SetResult) {
	fmt.Fprintf(w, "%s: wrote seq %d at revision %d: %s\n", res.Scope, res.Seq, res.Revision, res.Comment)
	if res.Version != "" && len(res.Platforms) > 0 {
		fmt.Fprintf(w, "%s %s is published for: %s (hosts of other platforms report it failed until it is published for theirs)\n",
			res.Plugin, res.Version, strings.Join(res.Platforms, ", "))
	}
	if len(res.HostPlatforms) > 0 {
		ps := slices.Sorted(maps.Keys(res.HostPlatforms))
		for i, p := range ps {
			ps[i] = fmt.Sprintf("%s %d", p, res.HostPlatforms[p])
		}
		fmt.Fprintf(w, "registered hosts it targets, by platform: %s\n", strings.Join(ps, ", "))
	}
}

// warn writes each warning of an answer on stderr (with -o json too: the
// answer's "warnings" carry them on stdout).
func (g *globals) warn(warnings []string) {
	for _, w := range warnings {
		fmt.Fprintf(g.streams.Err, "warning: %s\n", w)
	}
}

func printStatus(w io.Writer, st rollout.Status) {
	fmt.Fprintf(w, "%s in %s: %d hosts, %d report it (revision %d, %s)\n", st.Release, st.Scope, st.Hosts, st.Reporting,
		st.AtRevision, time.Now().UTC().Format(time.RFC3339))
	if st.Desired != "" {
		fmt.Fprintf(w, "desired: %s", st.Desired)
		if r := st.Rollout; r != nil && r.Percent < 100 {
			from := r.From
			if from == "" {
				from = "what they run"
			}
			fmt.Fprintf(w, " on %d%% of the hosts, the others %s", r.Percent, from)
		}
		fmt.Fprintln(w)
	}
	if asked := st.Hosts - st.Expected[""]; st.Expected != nil && asked > 0 {
		// Each host's own target: narrower documents and rollout buckets
		// included.
		fmt.Fprintf(w, "on target: %d of the %d hosts asked for a version, %d pending\n", st.OnTarget, asked, st.Pending)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUNNING\tHOSTS")
	for _, k := range sortedKeys(st.Versions) {
		v := k
		if v == "" {
			v = "(none yet)"
		}
		fmt.Fprintf(tw, "%s\t%d\n", v, st.Versions[k])
	}
	fmt.Fprintln(tw, "\nUPDATE STATE\tHOSTS")
	for _, k := range sortedKeys(st.States) {
		fmt.Fprintf(tw, "%s\t%d\n", k, st.States[k])
	}
	if len(st.Targets) > 0 {
		fmt.Fprintln(tw, "\nTARGET\tHOSTS")
		for _, k := range sortedKeys(st.Targets) {
			fmt.Fprintf(tw, "%s\t%d\n", k, st.Targets[k])
		}
	}
	_ = tw.Flush()
	if st.FailureCount == 0 {
		fmt.Fprintln(w, "\nno failures")
		return
	}
	fmt.Fprintf(w, "\nFAILURES (%d", st.FailureCount)
	if int64(len(st.Failures)) < st.FailureCount {
		fmt.Fprintf(w, ", first %d by name", len(st.Failures))
	}
	fmt.Fprintln(w, ")")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tRUNNING\tTARGET\tSTATE\tREASON")
	for _, f := range st.Failures {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", f.Host, f.Running, f.Target, f.State, f.Error)
	}
	_ = tw.Flush()
}

func sortedKeys(m map[string]int64) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
