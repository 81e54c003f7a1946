// Command crashplugin is a plugin release that passes the handshake and
// then crashes soon after Run starts: the update tests' bad new version.
package main

import (
	"context"
	"os"
	"time"

	hclog "github.com/hashicorp/go-hclog"

	"github.com/vigil-hids/vigil/plugins/testplugin"
	"github.com/vigil-hids/vigil/sdk"
)

type crashing struct{ sdk.Plugin }

func (c crashing) Run(ctx context.Context, em sdk.Emitter) error {
	time.Sleep(300 * time.Millisecond)
	os.Stderr.WriteString("crashplugin: crashing as built\n")
	os.Exit(3)
	return nil
}

func main() {
	sdk.Serve(func(log hclog.Logger) sdk.Plugin { return crashing{testplugin.New(log)} })
}
