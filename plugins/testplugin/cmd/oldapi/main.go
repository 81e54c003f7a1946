// Command oldapi is a plugin binary that speaks only plugin protocol
// version 99, for the host's tests: the host must refuse it with an error
// naming both its own versions and the plugin's.
package main

import (
	"os"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"

	"github.com/vigil-hids/vigil/plugins/testplugin"
	"github.com/vigil-hids/vigil/sdk"
)

// Version is the protocol version this binary claims.
const Version = 99

func main() {
	log := hclog.New(&hclog.LoggerOptions{Output: os.Stderr, JSONFormat: true})
	p := &sdk.GRPCPlugin{Impl: testplugin.New(log), Logger: log}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{Version: {sdk.PluginName: p}},
		GRPCServer:       plugin.DefaultGRPCServer,
		Logger:           log,
	})
}
