package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/signing"
)

// exportCmd writes the canonical manifest body and each signature as a
// .minisig file so the stock `minisign -V` can check the manifest too.
func (c *cli) exportCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "export BUNDLE DIR",
		Short: "Write manifest.body and manifest.body.<KEYID>.minisig for the stock minisign -V",
		Args:  cobra.ExactArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			s, err := signing.ReadBundleManifest(args[0])
			if err != nil {
				return err
			}
			body, err := s.Manifest.Body()
			if err != nil {
				return err
			}
			dir := args[1]
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("creating %s: %w", dir, err)
			}
			files := []string{filepath.Join(dir, "manifest.body")}
			if err := os.WriteFile(files[0], body, 0o644); err != nil {
				return fmt.Errorf("writing manifest body: %w", err)
			}
			for _, sg := range s.Signatures {
				p := filepath.Join(dir, "manifest.body."+filepath.Base(sg.KeyID)+".minisig")
				if err := os.WriteFile(p, []byte(sg.Signature), 0o644); err != nil {
					return fmt.Errorf("writing signature: %w", err)
				}
				files = append(files, p)
			}
			return c.print(map[string]any{"files": files}, fmt.Sprintf("wrote %d files to %s", len(files), dir))
		},
	}
}
