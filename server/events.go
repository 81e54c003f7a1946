package server

import (
	"fmt"
	"os"
	"path/filepath"

	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/server/metrics"
)

// eventsFile is the rotated file the accepted events go to.
type eventsFile = lumberjack.Logger

// EventsConfig configures the event ingest (POST /v1/events): accepted
// events are appended to DataDir/events/events.ndjson, rotated.
type EventsConfig struct {
	// Disabled answers POST /v1/events 404 ("disabled") and keeps no events.
	Disabled bool
	// MaxMB is the size of each events file in MiB (0: DefaultEventsMaxMB).
	MaxMB int
	// Backups is how many rotated files are kept (0: DefaultEventsBackups).
	Backups int
}

// Event file defaults and bounds.
const (
	DefaultEventsMaxMB   = 256
	DefaultEventsBackups = 8
	MinEventsMaxMB       = 64 // a body decompresses to at most 64 MiB
	MaxEventsMaxMB       = 65536
	MaxEventsBackups     = 10000
)

func (c EventsConfig) withDefaults() EventsConfig {
	if c.MaxMB == 0 {
		c.MaxMB = DefaultEventsMaxMB
	}
	if c.Backups == 0 {
		c.Backups = DefaultEventsBackups
	}
	return c
}

func (c EventsConfig) validate() error {
	c = c.withDefaults()
	if c.MaxMB < MinEventsMaxMB || c.MaxMB > MaxEventsMaxMB {
		return fmt.Errorf("events-max-mb must be between %d and %d (got %d)", MinEventsMaxMB, MaxEventsMaxMB, c.MaxMB)
	}
	if c.Backups < 1 || c.Backups > MaxEventsBackups {
		return fmt.Errorf("events-backups must be between 1 and %d (got %d)", MaxEventsBackups, c.Backups)
	}
	return nil
}

// setupEvents opens the events file and fills opts.Events; without a data
// dir (or with Disabled) the route answers 404 ("disabled").
func (s *Server) setupEvents(opts *httpapi.Options) error {
	ec := s.cfg.Events.withDefaults()
	opts.Events = &httpapi.EventsOptions{Metrics: metrics.NewEvents(s.cfg.Registry)}
	if ec.Disabled || s.cfg.DataDir == "" {
		s.log.Info("event ingest disabled: POST /v1/events answers 404", "reason", map[bool]string{true: "--no-events", false: "no data dir"}[ec.Disabled])
		return nil
	}
	dir := filepath.Join(s.cfg.DataDir, "events")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("server: events dir: %w", err)
	}
	s.events = &lumberjack.Logger{Filename: filepath.Join(dir, "events.ndjson"), MaxSize: ec.MaxMB, MaxBackups: ec.Backups}
	opts.Events.Out = s.events
	s.log.Info("event ingest enabled", "file", s.events.Filename, "max_mb", ec.MaxMB, "backups", ec.Backups)
	return nil
}

// EventsFile is the live events file, "" when ingest is disabled.
func (s *Server) EventsFile() string {
	if s.events == nil {
		return ""
	}
	return s.events.Filename
}

func (s *Server) closeEvents() {
	if s.events != nil {
		_ = s.events.Close()
	}
}
