// Command vigil-procmon is the procmon plugin binary; vigil-host runs it.
package main

import (
	"os"
	"runtime"

	"github.com/vigil-hids/vigil/plugins/procmon"
	"github.com/vigil-hids/vigil/sdk"
)

func main() {
	// One P unless the environment asks otherwise: the plugin's work is a
	// reader handing batches to workers, mostly system calls, and with
	// more Ps every hand-off wakes another thread to look for work, which
	// under an exec storm costs more than the work (docs/procmon.md).
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	sdk.Serve(procmon.New)
}
