package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/desired"
)

func scopeFlag(c *cobra.Command, p *string) {
	c.Flags().StringVar(p, "scope", "fleet", "fleet, group:LABEL=VALUE or host:NAME")
}

func (g *globals) configCmd() *cobra.Command {
	c := &cobra.Command{Use: "config", Short: "Desired state per scope: get, set, history, diff, rollback"}
	var scope string

	var effective bool
	get := &cobra.Command{
		Use: "get", Short: "Show a scope's document (--effective: what a host derives from all its scopes)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			sc, err := api.ParseScope(scope)
			if err != nil {
				return err
			}
			if effective && sc.Kind != api.ScopeHost {
				return errors.New("--effective needs --scope host:NAME")
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			if effective {
				eff, err := cl.Effective(g.ctx(c), sc.Host)
				if err != nil {
					return err
				}
				return g.emit(eff, func(w io.Writer) {
					fmt.Fprintf(w, "# %s effective at revision %d (host applied %d", sc, eff.Revision, eff.Applied)
					if !eff.Registered {
						fmt.Fprint(w, "; not registered, so no group documents apply")
					}
					fmt.Fprintln(w, ")")
					for _, l := range eff.Layers {
						fmt.Fprintf(w, "#   %s seq %d revision %d\n", l.Scope, l.Seq, l.Revision)
					}
					b, _ := json.MarshalIndent(eff.State, "", "  ")
					fmt.Fprintln(w, string(b))
				})
			}
			cur, err := cl.Get(g.ctx(c), sc)
			if err != nil {
				return err
			}
			return g.emit(cur, func(w io.Writer) {
				if cur.Revision == 0 {
					fmt.Fprintf(w, "# %s: no document yet\n", sc)
					return
				}
				d := cur.Document
				fmt.Fprintf(w, "# %s seq %d revision %d by %s at %s", sc, d.Seq, cur.Revision, d.Author, d.Time.Format(time.RFC3339))
				if d.Comment != "" {
					fmt.Fprintf(w, ": %s", d.Comment)
				}
				fmt.Fprintln(w)
				b, _ := json.MarshalIndent(d.State, "", "  ")
				fmt.Fprintln(w, string(b))
			})
		},
	}
	scopeFlag(get, &scope)
	get.Flags().BoolVar(&effective, "effective", false, "merge fleet, the host's groups and the host, as the host does")

	var file, comment string
	var ifRev int64
	set := &cobra.Command{
		Use:   "set",
		Short: "Replace a scope's document with a JSON or YAML file (-f FILE, or stdin)",
		Long: `set reads a JSON or YAML desired-state document and writes it as the scope's
next revision. It is checked locally, then by the server (strict keys, each
plugin's config by the plugin's own rules, log levels, size) before anything
is written; a refused document changes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			sc, err := api.ParseScope(scope)
			if err != nil {
				return err
			}
			var data []byte
			if file == "" || file == "-" {
				data, err = io.ReadAll(io.LimitReader(g.streams.In, desired.MaxInput+1))
			} else {
				data, err = os.ReadFile(file)
			}
			if err != nil {
				return fmt.Errorf("reading the document: %w", err)
			}
			// Syntax errors are reported before a connection is made.
			if _, err := desired.Parse(data); err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			var ip *int64
			if c.Flags().Changed("if-revision") {
				ip = &ifRev
			}
			res, err := cl.Set(g.ctx(c), sc, data, comment, ip)
			if err != nil {
				return err
			}
			return g.emit(res, func(w io.Writer) {
				fmt.Fprintf(w, "%s: wrote seq %d at revision %d\n", res.Scope, res.Seq, res.Revision)
			})
		},
	}
	scopeFlag(set, &scope)
	set.Flags().StringVarP(&file, "file", "f", "", "document to write (JSON or YAML; - or empty for stdin)")
	set.Flags().StringVar(&comment, "comment", "", "why, recorded in history")
	set.Flags().Int64Var(&ifRev, "if-revision", 0, "write only if the scope is still at this revision (from config get)")

	var limit int
	history := &cobra.Command{
		Use: "history", Short: "Show a scope's change history, newest first", Args: cobra.NoArgs,
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
			h, err := cl.History(g.ctx(c), sc, limit)
			if err != nil {
				return err
			}
			return g.emit(h, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SEQ\tTIME\tAUTHOR\tCOMMENT")
				for _, d := range h {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", d.Seq, d.Time.Format(time.RFC3339), d.Author, d.Comment)
				}
				_ = tw.Flush()
			})
		},
	}
	scopeFlag(history, &scope)
	history.Flags().IntVar(&limit, "limit", 0, "show at most this many (0: all)")

	var from, to int64
	diff := &cobra.Command{
		Use: "diff", Short: "Compare two history records (--from SEQ [--to SEQ]; default to: current)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			sc, err := api.ParseScope(scope)
			if err != nil {
				return err
			}
			if from <= 0 {
				return errors.New("--from SEQ is required")
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			d, err := cl.Diff(g.ctx(c), sc, from, to)
			if err != nil {
				return err
			}
			return g.emit(d, func(w io.Writer) {
				target := "current"
				if to > 0 {
					target = fmt.Sprint("seq ", to)
				}
				fmt.Fprintf(w, "# %s: seq %d -> %s\n%s", sc, from, target, d.Text)
			})
		},
	}
	scopeFlag(diff, &scope)
	diff.Flags().Int64Var(&from, "from", 0, "history seq to compare from")
	diff.Flags().Int64Var(&to, "to", 0, "history seq to compare to (default: the current document)")

	var toSeq int64
	var rbComment string
	rollback := &cobra.Command{
		Use: "rollback", Short: "Write an old history record as a new revision (--to SEQ)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			sc, err := api.ParseScope(scope)
			if err != nil {
				return err
			}
			if toSeq <= 0 {
				return errors.New("--to SEQ is required")
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			res, err := cl.Rollback(g.ctx(c), sc, toSeq, rbComment)
			if err != nil {
				return err
			}
			return g.emit(res, func(w io.Writer) {
				fmt.Fprintf(w, "%s: rolled back to seq %d as seq %d at revision %d\n", res.Scope, toSeq, res.Seq, res.Revision)
			})
		},
	}
	scopeFlag(rollback, &scope)
	rollback.Flags().Int64Var(&toSeq, "to", 0, "history seq whose document becomes current again")
	rollback.Flags().StringVar(&rbComment, "comment", "", "why, recorded in history")

	c.AddCommand(get, set, history, diff, rollback)
	return c
}
