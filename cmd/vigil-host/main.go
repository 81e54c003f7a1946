// Command vigil-host is the daemon on every server: it runs Vigil's plugins
// as supervised processes and ships their events.
//
//	vigil-host run --config /etc/vigil/host.yaml
//	vigil-host status [-o json]
//	vigil-host selfupdate status|install|rollback
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/agent"
	"github.com/vigil-hids/vigil/host/config"
	"github.com/vigil-hids/vigil/host/logging"
	"github.com/vigil-hids/vigil/host/status"
	"github.com/vigil-hids/vigil/internal/version"
)

func main() {
	if err := root().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "vigil-host:", err)
		os.Exit(1)
	}
}

func root() *cobra.Command {
	cmd := &cobra.Command{
		Use:           "vigil-host",
		Short:         "Vigil host daemon: runs the detection plugins and ships their events",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.AddCommand(runCmd(), statusCmd(), versionCmd(), selfUpdateCmd())
	return cmd
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run:   func(*cobra.Command, []string) { fmt.Println(version.Version) },
	}
}

func runCmd() *cobra.Command {
	var path, hostName, logLevel string
	var sf selfUpdateFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the host daemon in the foreground",
		RunE: func(cmd *cobra.Command, _ []string) error {
			// First, before the config is read: finish or undo a
			// self-update (a new binary that cannot read the config must
			// still roll back).
			boot, err := sf.startup()
			if err != nil {
				return err
			}
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			// Flags override the file.
			if hostName != "" {
				cfg.HostName = hostName
			}
			if logLevel != "" {
				cfg.Log.Level = logLevel
			}
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("host config %s with flags: %w", path, err)
			}
			restart, err := run(cfg, &sf, boot)
			if restart && err == nil {
				return sf.restart()
			}
			return err
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "/etc/vigil/host.yaml", "host config file (YAML)")
	sf.register(cmd)
	cmd.Flags().StringVar(&hostName, "host-name", "", "override host_name")
	cmd.Flags().StringVar(&logLevel, "log-level", "", "override log.level (emergency, alert, critical, error, warning, notice, info, debug)")
	return cmd
}

func run(cfg config.Config, sf *selfUpdateFlags, boot *bootState) (restart bool, _ error) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "vigil-host: warning: not running as root; plugins that need netlink or cgroups will fail and the status socket is only as private as its directory")
	}
	log, err := logging.New(cfg.Log)
	if err != nil {
		return false, err
	}
	defer log.Close()
	su, err := sf.agentSelfUpdate(cfg, boot, log.Logger)
	if err != nil {
		return false, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	a, err := agent.Start(ctx, cfg, agent.Options{
		Version:     version.Version,
		Log:         log.Logger,
		PluginLog:   logging.HCLog(log.Logger, ""),
		Registry:    reg,
		SetLogLevel: log.SetLevel,
		SelfUpdate:  su,
	})
	if err != nil {
		return false, err
	}
	select {
	case <-ctx.Done():
		log.Info("stopping", "reason", "signal")
	case err = <-a.Err():
		log.Error("stopping", "error", err)
	case why := <-a.RestartRequested():
		log.Info("stopping to restart into the binary at its path", "reason", why, "binary", sf.target)
		restart = true
	}
	return restart, errors.Join(err, a.Close())
}

func statusCmd() *cobra.Command {
	var sock, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show plugins, versions, states, counters and last errors of the local host (root only)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			snap, err := status.Fetch(ctx, sock)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(snap)
			}
			printStatus(snap)
			return nil
		},
	}
	cmd.Flags().StringVar(&sock, "socket", filepath.Join("/run/vigil", "host.sock"), "status socket (run_dir/host.sock)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func printStatus(s status.Snapshot) {
	stopped := ""
	if s.Stopped {
		stopped = "  EMERGENCY STOP in force"
	}
	fmt.Printf("host %s  version %s  pid %d  up %s  cpu %.2f%%  rss %s%s\n",
		s.Host, s.Version, s.PID, time.Since(s.StartedAt).Round(time.Second), s.CPUPercent, mib(s.RSSBytes), stopped)
	fmt.Printf("sinks: %s\n", strings.Join(s.Sinks, ", "))
	if len(s.Control) > 0 {
		fmt.Printf("fleet: connected=%v applied_revision=%v from_disk=%v", s.Control["connected"], s.Control["applied_revision"], s.Control["from_disk"])
		if e, _ := s.Control["applied_error"].(string); e != "" {
			fmt.Printf(" rejected: %s", e)
		}
		if e, _ := s.Control["last_error"].(string); e != "" {
			fmt.Printf(" last error: %s", e)
		}
		fmt.Println()
	}
	fmt.Println()
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PLUGIN\tVERSION\tSTATE\tPID\tRESTARTS\tCPU%\tRSS\tEMITTED\tDELIVERED\tQUEUED\tDROPPED\tBREAKER")
	for _, p := range s.Plugins {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%.2f\t%s\t%d\t%d\t%d\t%s\t%s\n", p.Name, p.Version, p.State, p.PID, p.Restarts,
			p.CPUPercent, mib(p.RSSBytes), p.Emitted, p.Delivered, p.Queued, drops(p.Dropped), p.Breaker)
	}
	w.Flush()
	for _, p := range s.Plugins {
		if p.LastError != "" {
			fmt.Printf("\n%s last error: %s\n", p.Name, p.LastError)
		}
		if p.ConfigError != "" {
			fmt.Printf("%s config rejected (previous config in force): %s\n", p.Name, p.ConfigError)
		}
		if len(p.Counters) > 0 {
			keys := make([]string, 0, len(p.Counters))
			for k := range p.Counters {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			parts := make([]string, len(keys))
			for i, k := range keys {
				parts[i] = fmt.Sprintf("%s=%d", k, p.Counters[k])
			}
			fmt.Printf("%s counters: %s\n", p.Name, strings.Join(parts, " "))
		}
		if p.Update != nil {
			fmt.Printf("%s update: %s\n", p.Name, updateLine(p.Update))
		}
	}
	if s.HostUpdate != nil {
		fmt.Printf("\nvigil-host update: %s\n", updateLine(s.HostUpdate))
	}
	for _, name := range slices.Sorted(maps.Keys(s.SinkCounts)) {
		c := s.SinkCounts[name]
		fmt.Printf("\nsink %s: accepted %d, delivered %d, pending %d, lost %s", name, c.Accepted, c.Delivered, c.Pending, drops(c.Lost))
		if c.LastError != "" {
			fmt.Printf("; last error: %s", c.LastError)
		}
		fmt.Println()
	}
	if k := s.Keyring; k != nil {
		fmt.Printf("\nrelease keyring: serial %d, expires %s", k.Serial, k.Expires.UTC().Format(time.RFC3339))
		if k.Error != "" {
			fmt.Printf("; published serial %d refused: %s", k.Refused, k.Error)
		}
		fmt.Println()
	}
}

// updateLine is one release install's state: target, state, what runs,
// and the reason of a refusal or failure.
func updateLine(u *api.UpdateStatus) string {
	line := fmt.Sprintf("target %s %s, running %s", u.Target, u.State, cmp.Or(u.Running, "the config file's binary"))
	if !u.At.IsZero() {
		line += ", at " + u.At.UTC().Format(time.RFC3339)
	}
	if u.Error != "" {
		line += ": " + u.Error
	}
	return line
}

func mib(b uint64) string { return fmt.Sprintf("%.1fMiB", float64(b)/(1<<20)) }

func drops(d map[string]uint64) string {
	if len(d) == 0 {
		return "0"
	}
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, d[k])
	}
	return strings.Join(parts, ",")
}
