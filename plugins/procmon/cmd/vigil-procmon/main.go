// Command vigil-procmon is the procmon plugin binary; vigil-host runs it.
package main

import (
	"os"
	"runtime"
	"runtime/debug"

	"github.com/vigil-hids/vigil/plugins/procmon"
	"github.com/vigil-hids/vigil/sdk"
)

func main() {
	tune()
	sdk.Serve(procmon.New)
}

// tune sets the runtime for procmon unless the environment already does
// (GOMAXPROCS, GOGC). See docs/procmon.md, "Where the CPU and memory go".
func tune() {
	// One P: the plugin's work is a reader handing batches to workers,
	// mostly system calls, and with more Ps every hand-off wakes another
	// thread to look for work, which under an exec storm costs more than
	// the work.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	// The live heap is a few megabytes and the steady state allocates
	// little (the SDK's batch buffers), so collecting at half the live
	// heap's growth instead of all of it costs next to nothing and keeps
	// the heap, and what the runtime holds back from the OS, smaller.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
}
