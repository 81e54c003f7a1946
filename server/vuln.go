package server

import (
	"context"
	"errors"
	"path/filepath"
	"time"

	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/server/registry"
	"github.com/vigil-hids/vigil/server/vulnstore"
)

// VulnConfig configures the vulnerability index (issue 7).
type VulnConfig struct {
	// Disabled leaves the inventory ingest and vulnerability routes out.
	Disabled bool
	// Dir holds the inventory database (vuln.db); "" means
	// DataDir/vuln. With an external etcd and no DataDir, Dir must be set
	// or the routes are left out.
	Dir string
	// OSV are advisory files, zips or directories imported at start and
	// on reload (SIGHUP, POST /v1/vuln/reload).
	OSV []string
	// MaxUpload bounds an inventory upload (gzip-compressed bytes).
	MaxUpload int64
	// OfflineAfter drops hosts whose registration has been gone this long
	// (0: vulnstore.DefaultOfflineAfter).
	OfflineAfter time.Duration
	// PruneInterval is how often registrations are checked (0: an
	// eighth of OfflineAfter, at most 10 minutes).
	PruneInterval time.Duration
}

func (c VulnConfig) dir(dataDir string) string {
	if c.Dir != "" || dataDir == "" {
		return c.Dir
	}
	return filepath.Join(dataDir, "vuln")
}

// setupVuln loads the advisories and inventories and fills opts.Vuln.
func (s *Server) setupVuln(ctx context.Context, opts *httpapi.Options) error {
	vc := s.cfg.Vuln
	dir := vc.dir(s.cfg.DataDir)
	if vc.Disabled || dir == "" {
		s.log.Info("vulnerability index disabled", "reason", map[bool]string{true: "disabled", false: "no data dir"}[vc.Disabled])
		return nil
	}
	svc, err := vulnstore.Open(vulnstore.Config{Dir: dir, OSV: vc.OSV, OfflineAfter: vc.OfflineAfter,
		Logger: s.cfg.Logger, Now: s.cfg.Now})
	if err != nil {
		return err
	}
	s.vuln = svc
	opts.Vuln = &httpapi.VulnOptions{Service: svc, MaxUpload: vc.MaxUpload}
	off := vc.OfflineAfter
	if off == 0 {
		off = vulnstore.DefaultOfflineAfter
	}
	every := vc.PruneInterval
	if every == 0 {
		every = min(off/8, 10*time.Minute)
	}
	pctx, cancel := context.WithCancel(context.Background())
	s.vulnStop = cancel
	s.vulnWG.Add(1)
	go func() {
		defer s.vulnWG.Done()
		s.pruneLoop(pctx, svc, every)
	}()
	return nil
}

// pruneLoop drops hosts whose registration has been gone long enough.
// While the registry is re-listing nothing is decided.
func (s *Server) pruneLoop(ctx context.Context, svc *vulnstore.Service, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_, err := svc.Prune(func(host string) (bool, error) {
			_, _, ok, err := s.index.Get(host)
			return ok, err
		})
		if err != nil && !errors.Is(err, registry.ErrNotSynced) {
			s.log.Warn("pruning the vulnerability index", "error", err.Error())
		}
	}
}

// Vuln returns the vulnerability store, nil when disabled.
func (s *Server) Vuln() *vulnstore.Service { return s.vuln }

// ReloadAdvisories imports the configured OSV paths again (SIGHUP).
func (s *Server) ReloadAdvisories() (vulnstore.Import, error) {
	if s.vuln == nil {
		return vulnstore.Import{}, errors.New("server: the vulnerability index is disabled")
	}
	return s.vuln.Reload()
}

// closeVuln stops the prune loop and closes the store.
func (s *Server) closeVuln() {
	if s.vulnStop != nil {
		s.vulnStop()
	}
	s.vulnWG.Wait()
	if s.vuln != nil {
		if err := s.vuln.Close(); err != nil {
			s.log.Warn("closing the vulnerability store", "error", err.Error())
		}
	}
}
