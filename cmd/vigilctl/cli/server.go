package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func (g *globals) serverCmd() *cobra.Command {
	c := &cobra.Command{Use: "server", Short: "The server and its etcd"}
	c.AddCommand(&cobra.Command{
		Use: "status", Short: "Show replicas, the election, etcd members, leader, db size and alarms", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			st, err := cl.Status(g.ctx(c))
			if err != nil {
				return err
			}
			return g.emit(st, func(w io.Writer) {
				fmt.Fprintf(w, "replica:          %s (%s, version %s, leader %t)\n", st.Replica.ID, st.Replica.Address, st.Replica.Version, st.IsLeader)
				fmt.Fprintf(w, "election leader:  %s\n", st.ElectionLeader)
				ids := make([]string, 0, len(st.Replicas))
				for _, r := range st.Replicas {
					ids = append(ids, r.ID)
				}
				fmt.Fprintf(w, "replicas:         %s\n", strings.Join(ids, ", "))
				fmt.Fprintf(w, "etcd leader:      %s\n", st.Etcd.Leader)
				fmt.Fprintf(w, "etcd healthy:     %t\n", st.Etcd.Healthy)
				fmt.Fprintf(w, "etcd db size:     %d bytes\n", st.Etcd.DBSize)
				alarms := strings.Join(st.Etcd.Alarms, ", ")
				if st.Etcd.AlarmsError != "" {
					alarms = "unknown: " + st.Etcd.AlarmsError
				} else if alarms == "" {
					alarms = "none"
				}
				fmt.Fprintf(w, "etcd alarms:      %s\n", alarms)
				if st.EtcdError != "" {
					fmt.Fprintf(w, "etcd error:       %s\n", st.EtcdError)
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "MEMBER\tID\tCLIENT URLS\tVERSION\tDB SIZE\tERROR")
				byID := map[string]int{}
				for i, e := range st.Etcd.Endpoints {
					byID[e.MemberID] = i
				}
				for _, m := range st.Etcd.Members {
					ver, size, errs := "", "", ""
					if i, ok := byID[m.ID]; ok {
						e := st.Etcd.Endpoints[i]
						ver, size, errs = e.Version, fmt.Sprint(e.DBSize), e.Err
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.ID, strings.Join(m.ClientURLs, ","), ver, size, errs)
				}
				for _, e := range st.Etcd.Endpoints {
					if e.Err != "" {
						fmt.Fprintf(tw, "?\t-\t%s\t\t\t%s\n", e.Endpoint, e.Err)
					}
				}
				_ = tw.Flush()
			})
		},
	})
	return c
}
