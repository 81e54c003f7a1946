// Command vigil-example is the example plugin's binary; all of its logic
// lives in package example.
package main

import (
	"github.com/vigil-hids/vigil/plugins/example"
	"github.com/vigil-hids/vigil/sdk"
)

func main() { sdk.Serve(example.New) }
