// Command vigil-vulnscan is the vulnscan plugin's binary; all of its logic
// lives in package vulnscan.
package main

import (
	"github.com/vigil-hids/vigil/plugins/vulnscan"
	"github.com/vigil-hids/vigil/sdk"
)

func main() { sdk.Serve(vulnscan.New) }
