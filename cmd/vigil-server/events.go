package main

import (
	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/server"
)

// addEventsFlags binds the event ingest flags (POST /v1/events).
func addEventsFlags(c *cobra.Command, f *flags) {
	fs := c.Flags()
	fs.IntVar(&f.cfg.Events.MaxMB, "events-max-mb", server.DefaultEventsMaxMB, "size of each events file (DATA-DIR/events/events.ndjson) before it is rotated, MiB")
	fs.IntVar(&f.cfg.Events.Backups, "events-backups", server.DefaultEventsBackups, "rotated events files kept")
	fs.BoolVar(&f.cfg.Events.Disabled, "no-events", false, "keep no events: POST /v1/events answers 404")
}
