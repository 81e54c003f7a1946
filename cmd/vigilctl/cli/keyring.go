package cli

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/signing"
)

func (g *globals) keyringCmd() *cobra.Command {
	c := &cobra.Command{Use: "keyring", Short: "The fleet's root-signed release keyring: publish, show, history"}
	publish := &cobra.Command{
		Use:   "publish KEYRING_FILE",
		Short: "Publish a root-signed keyring (vigil-sign keyring create, then sign) for hosts to take",
		Long: `publish uploads KEYRING_FILE to the server, which writes it byte for byte
to etcd (/hids/keyring/current) with a record of who published it. Hosts
that pin root keys verify its root signatures and take it when its serial
is higher than theirs; etcd and the server are only a mirror.

The serial only grows: the same file again is "unchanged"; the same keyring
with more root signatures replaces it ("updated"); a lower serial, or the
same serial with other content, is refused. An expired keyring is refused,
and so is one the server's --release-roots do not sign, if it has them.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			info, err := cl.PublishKeyring(g.ctx(c), args[0])
			if err != nil {
				return err
			}
			return g.emit(info, func(w io.Writer) {
				fmt.Fprintf(w, "keyring serial %d: %s at revision %d; release keys %s (threshold %d); root signers %s; expires %s\n",
					info.Serial, info.Result, info.Revision, strings.Join(info.KeyIDs, ","), info.Threshold,
					strings.Join(info.RootSigners, ","), info.Expires.UTC().Format(time.RFC3339))
			})
		},
	}
	show := &cobra.Command{
		Use:   "show",
		Short: "Show the published keyring: serial, expiry, release keys, root signers, who published it",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			info, err := cl.Keyring(g.ctx(c))
			if err != nil {
				return err
			}
			return g.emit(info, func(w io.Writer) { printKeyring(w, info) })
		},
	}
	history := &cobra.Command{
		Use:   "history",
		Short: "List every published keyring serial with who published it and when",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			recs, err := cl.KeyringHistory(g.ctx(c))
			if err != nil {
				return err
			}
			return g.emit(recs, func(w io.Writer) { printKeyringHistory(w, recs) })
		},
	}
	c.AddCommand(publish, show, history)
	return c
}

func printKeyring(w io.Writer, info api.KeyringInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "serial:\t%d\n", info.Serial)
	fmt.Fprintf(tw, "expires:\t%s\n", info.Expires.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "threshold:\t%d of %d release keys\n", info.Threshold, len(info.KeyIDs))
	fmt.Fprintf(tw, "release keys:\t%s\n", strings.Join(info.KeyIDs, ", "))
	fmt.Fprintf(tw, "root signers:\t%s\n", strings.Join(info.RootSigners, ", "))
	fmt.Fprintf(tw, "published:\t%s\n", byAt(info.PublishedBy, info.PublishedAt))
	if info.UpdatedBy != "" {
		fmt.Fprintf(tw, "signatures added:\t%s\n", byAt(info.UpdatedBy, info.UpdatedAt))
	}
	fmt.Fprintf(tw, "revision:\t%d\n", info.Revision)
	_ = tw.Flush()
}

// printKeyringHistory prints the records as a table; a record the server
// could not decode is a row saying so, and its key and error follow the
// table.
func printKeyringHistory(w io.Writer, recs []api.KeyringRecord) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERIAL\tPUBLISHED\tBY\tSIGNATURES ADDED\tEXPIRES\tRELEASE KEYS\tROOT SIGNERS")
	var damaged []api.KeyringRecord
	for _, r := range recs {
		if r.Error != "" {
			serial := strconv.FormatUint(r.Serial, 10)
			if r.Serial == 0 {
				serial = "?"
			}
			fmt.Fprintf(tw, "%s\t(unreadable record, see below)\t-\t-\t-\t-\t-\n", serial)
			damaged = append(damaged, r)
			continue
		}
		exp, keys, signers := "(unreadable)", "", ""
		if s, err := signing.ParseKeyring(bytes.NewReader(r.Signed)); err == nil {
			exp = s.Keyring.Expires.UTC().Format(time.RFC3339)
			var ids []string
			for _, k := range s.Keyring.Keys {
				if pub, err := signing.ParsePublicKey([]byte(k)); err == nil {
					ids = append(ids, signing.KeyID(pub.ID()))
				}
			}
			keys = strings.Join(ids, ",")
			ids = ids[:0]
			for _, sig := range s.Signatures {
				ids = append(ids, sig.KeyID)
			}
			signers = strings.Join(ids, ",")
		}
		added := "-"
		if r.UpdatedBy != "" {
			added = byAt(r.UpdatedBy, r.UpdatedAt)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Serial, r.PublishedAt.UTC().Format(time.RFC3339), r.PublishedBy, added,
			exp, keys, signers)
	}
	_ = tw.Flush()
	if len(damaged) > 0 {
		fmt.Fprintf(w, "\n%d history record(s) could not be decoded (damaged in etcd; the others are listed above):\n", len(damaged))
		for _, r := range damaged {
			fmt.Fprintf(w, "  %s: %s\n", r.Key, r.Error)
		}
	}
}

func byAt(who string, at time.Time) string {
	if who == "" {
		return "(no record)"
	}
	return fmt.Sprintf("by %s at %s", who, at.UTC().Format(time.RFC3339))
}
