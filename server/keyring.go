package server

import (
	"fmt"
	"os"

	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/server/rollout"
	"github.com/vigil-hids/vigil/signing"
)

// setupKeyring fills opts.Keyring: the release keyring routes need only
// etcd, so they are served with or without an artifact store.
func (s *Server) setupKeyring(opts *httpapi.Options) error {
	ko := rollout.KeyringOptions{Store: s.store, Now: s.cfg.Now}
	if path := s.cfg.Releases.RootsFile; path != "" {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("server: release-roots: %w", err)
		}
		defer f.Close()
		t, err := signing.ParseTrust(f)
		if err != nil {
			return fmt.Errorf("server: release-roots %s: %w", path, err)
		}
		ko.Roots = &t
		s.log.Info("release keyrings are checked against root keys", "roots_file", path, "root_key_ids", t.KeyIDs(),
			"threshold", t.Threshold)
	}
	opts.Keyring = &httpapi.KeyringOptions{Keyrings: rollout.NewKeyrings(ko)}
	return nil
}
