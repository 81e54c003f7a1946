// Command badcookie is a plugin binary built with the wrong magic cookie,
// for the host's tests: go-plugin in the plugin sees the host's cookie
// does not match its own, prints that it is a plugin not meant to be run
// by hand, and exits 1 before any handshake.
package main

import (
	"os"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"

	"github.com/vigil-hids/vigil/plugins/testplugin"
	"github.com/vigil-hids/vigil/sdk"
)

func main() {
	log := hclog.New(&hclog.LoggerOptions{Output: os.Stderr, JSONFormat: true})
	hs := sdk.Handshake
	hs.MagicCookieValue = "not-the-vigil-cookie"
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  hs,
		VersionedPlugins: sdk.PluginSets(&sdk.GRPCPlugin{Impl: testplugin.New(log), Logger: log}),
		GRPCServer:       plugin.DefaultGRPCServer,
		Logger:           log,
	})
}
