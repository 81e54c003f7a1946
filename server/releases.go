package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vigil-hids/vigil/server/artifacts"
	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/server/rollout"
	"github.com/vigil-hids/vigil/signing"
)

// ReleaseConfig configures the artifact store and rollouts.
type ReleaseConfig struct {
	// ArtifactDir holds the release binaries by sha256; "" means
	// DataDir/artifacts. With neither set (an external etcd and no data
	// dir) the release routes are left out.
	ArtifactDir string
	// MaxArtifactBytes caps one uploaded binary; zero means
	// artifacts.DefaultMaxBytes.
	MaxArtifactBytes int64
	// TrustFile, if set, is a signing trust file (vigil-sign trust) the
	// server checks uploads against as a courtesy; hosts never rely on it.
	TrustFile string
	// RootsFile, if set, is a trust file of the root keys (vigil-sign
	// trust) that published release keyrings are checked against as a
	// courtesy (keyring.go); hosts verify against their own pinned roots.
	RootsFile string
}

// artifactDir is where the artifacts live, "" if nowhere.
func (c Config) artifactDir() string {
	if c.Releases.ArtifactDir != "" {
		return c.Releases.ArtifactDir
	}
	if c.DataDir != "" {
		return filepath.Join(c.DataDir, "artifacts")
	}
	return ""
}

// setupReleases prepares the artifact store and fills opts.Releases.
func (s *Server) setupReleases(ctx context.Context, opts *httpapi.Options) error {
	rc := s.cfg.Releases
	dir := s.cfg.artifactDir()
	if dir == "" {
		s.log.Warn("no artifact-dir and no data-dir: release publishing and artifact downloads are disabled")
		return nil
	}
	store, err := artifacts.Open(artifacts.Config{Dir: dir, MaxBytes: rc.MaxArtifactBytes, Logger: s.cfg.Logger})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	ro := &httpapi.ReleaseOptions{Artifacts: store, Rollout: rollout.New(rollout.Options{Store: s.store, Index: s.index}),
		Now: s.cfg.Now}
	if rc.TrustFile != "" {
		f, err := os.Open(rc.TrustFile)
		if err != nil {
			return fmt.Errorf("server: release-trust: %w", err)
		}
		defer f.Close()
		t, err := signing.ParseTrust(f)
		if err != nil {
			return fmt.Errorf("server: release-trust %s: %w", rc.TrustFile, err)
		}
		ro.Trust = &t
	}
	opts.Releases = ro
	s.log.Info("artifact store ready", "dir", dir, "max_bytes", store.MaxBytes(), "trust_file", rc.TrustFile)
	return nil
}
