package cli

import "github.com/spf13/cobra"

// vulnCmds are the vulnerability commands (issue 7).
func (g *globals) vulnCmds() []*cobra.Command { return nil }
