// Command vigil-vulnscan is the vulnscan plugin's binary; all of its logic
// lives in package vulnscan.
package main

import (
	"os"

	"github.com/vigil-hids/vigil/plugins/vulnscan"
	"github.com/vigil-hids/vigil/plugins/vulnscan/collect"
	"github.com/vigil-hids/vigil/sdk"
)

func main() {
	// The plugin reads rpm databases in a child process of this binary.
	if vulnscan.IsRPMReader(os.Args) {
		os.Exit(vulnscan.RPMReaderMain(os.Args[2:], collect.ReadRPM))
	}
	sdk.Serve(vulnscan.NewWith(vulnscan.Options{RPMReaderChild: true}))
}
