package server

import (
	"context"

	"github.com/vigil-hids/vigil/server/httpapi"
)

// ReleaseConfig configures the artifact store and rollouts (issue 5).
type ReleaseConfig struct{}

// setupReleases prepares the artifact store and fills opts.Releases.
func (s *Server) setupReleases(ctx context.Context, opts *httpapi.Options) error { return nil }
