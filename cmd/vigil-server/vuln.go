package main

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/server"
	"github.com/vigil-hids/vigil/server/vulnstore"
	"github.com/vigil-hids/vigil/vuln/ingest"
)

// addVulnFlags binds the vulnerability index flags (issue 7).
func addVulnFlags(c *cobra.Command, f *flags) {
	fs := c.Flags()
	fs.StringSliceVar(&f.cfg.Vuln.OSV, "osv", nil, "OSV advisories to import at start and on SIGHUP: .json files, .zip archives or directories (repeatable)")
	fs.StringVar(&f.cfg.Vuln.Dir, "vuln-dir", "", "inventory database directory (default DATA-DIR/vuln)")
	fs.Int64Var(&f.cfg.Vuln.MaxUpload, "vuln-max-upload", ingest.DefaultMaxUpload, "largest inventory upload accepted, gzip-compressed bytes")
	fs.DurationVar(&f.cfg.Vuln.OfflineAfter, "vuln-offline-after", vulnstore.DefaultOfflineAfter, "drop a host from the vulnerability index once its registration has been gone this long")
	fs.BoolVar(&f.cfg.Vuln.Disabled, "no-vuln", false, "serve no inventory ingest or vulnerability routes")
}

// reloadOnHUP re-imports the OSV advisories on each SIGHUP until the
// returned stop is called.
func reloadOnHUP(s *server.Server, log *slog.Logger) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-ch:
				imp, err := s.ReloadAdvisories()
				if err != nil {
					log.Error("SIGHUP: reloading advisories failed; the index keeps the previous ones", "component", "server", "error", err.Error())
					continue
				}
				log.Info("SIGHUP: advisories reloaded", "component", "server", "files", imp.Files, "added", imp.Added,
					"replaced", imp.Replaced, "skipped", imp.Skipped)
			}
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}
