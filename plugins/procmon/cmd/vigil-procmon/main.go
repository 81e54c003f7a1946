// Command vigil-procmon is the procmon plugin binary; vigil-host runs it.
package main

import (
	"github.com/vigil-hids/vigil/plugins/procmon"
	"github.com/vigil-hids/vigil/sdk"
)

func main() { sdk.Serve(procmon.New) }
