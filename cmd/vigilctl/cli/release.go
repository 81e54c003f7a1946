package cli

import "github.com/spf13/cobra"

// releaseCmds are the release and rollout commands (issue 5).
func (g *globals) releaseCmds() []*cobra.Command { return nil }
