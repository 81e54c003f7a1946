package main

import (
	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/server/artifacts"
)

// addReleaseFlags binds the artifact store and rollout flags.
func addReleaseFlags(c *cobra.Command, f *flags) {
	fs := c.Flags()
	fs.StringVar(&f.cfg.Releases.ArtifactDir, "artifact-dir", "", "release binaries by sha256 (default DATA_DIR/artifacts)")
	fs.Int64Var(&f.cfg.Releases.MaxArtifactBytes, "artifact-max-bytes", artifacts.DefaultMaxBytes, "largest release binary accepted by publish")
	fs.StringVar(&f.cfg.Releases.TrustFile, "release-trust", "", "trust file (vigil-sign) to check uploaded releases against; a courtesy, hosts verify on their own")
	fs.StringVar(&f.cfg.Releases.RootsFile, "release-roots", "", "trust file of the root keys to check published release keyrings against; a courtesy, hosts verify on their own")
}
