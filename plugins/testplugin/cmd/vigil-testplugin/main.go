// Command vigil-testplugin is the misbehaving plugin the host's tests run;
// see package testplugin.
package main

import (
	"github.com/vigil-hids/vigil/plugins/testplugin"
	"github.com/vigil-hids/vigil/sdk"
)

func main() { sdk.Serve(testplugin.New) }
