// Command vigilctl is the operator CLI of a Vigil fleet: agents, desired
// state per scope with history, the emergency stop and server status, over
// vigil-server's API. See docs/server.md.
package main

import (
	"os"

	"github.com/vigil-hids/vigil/cmd/vigilctl/cli"
)

func main() {
	os.Exit(cli.Run(os.Args[1:], cli.Streams{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}, os.Getenv))
}
