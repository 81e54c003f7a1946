// Command vigil-netmon is the netmon plugin binary; vigil-host runs it.
package main

import (
	"github.com/vigil-hids/vigil/plugins/netmon"
	"github.com/vigil-hids/vigil/sdk"
)

func main() { sdk.Serve(netmon.New) }
