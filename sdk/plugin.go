// Package sdk is the public API that Vigil plugins are written against.
//
// A plugin is a package with a type that implements Plugin, plus a tiny main
// that calls Serve:
//
//	func main() { sdk.Serve(myplugin.New) }
//
// The host (vigil-host) launches the binary through HashiCorp go-plugin over
// gRPC, calls Info, Configure and Run, and reads the events the plugin emits
// as batches on one stream. Optional capabilities, such as on-demand tasks,
// are separate interfaces the plugin may also implement (Tasker).
//
// sdk never imports the host or the server; plugins may import only sdk and
// its subpackages.
package sdk

import (
	"context"
	"encoding/json"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
)

// ProtocolVersion is the plugin API version this SDK speaks. The history of
// versions is kept in pluginpb/plugin.proto.
const ProtocolVersion = 1

// PluginName is the name under which the Vigil plugin is dispensed by
// go-plugin. Every Vigil plugin binary serves exactly one plugin.
const PluginName = "vigil"

// Handshake is the go-plugin handshake shared by vigil-host and every plugin.
// The magic cookie only keeps a user from running a plugin binary by hand; it
// is not a security measure (the host checks the binary's sha256 instead).
var Handshake = plugin.HandshakeConfig{
	// ProtocolVersion is left zero: versions are negotiated through
	// VersionedPlugins, keyed by ProtocolVersion above.
	MagicCookieKey:   "VIGIL_PLUGIN_COOKIE",
	MagicCookieValue: "0b6f2d9e4a1c7355-vigil-hids-plugin",
}

// Info identifies a plugin.
type Info struct {
	// Name is the plugin's name, lower case, e.g. "procmon".
	Name string
	// Version is the plugin's semantic version, e.g. "1.2.0".
	Version string
	// Description is one line about what the plugin watches.
	Description string
}

// Config is a plugin's configuration: a pointer to a struct with json tags,
// filled with its defaults by Plugin.DefaultConfig. Validate must be pure: it
// looks only at the receiver, and returns every problem (errors.Join), each
// naming the key as written in the file, the allowed values and the value
// found.
type Config interface {
	Validate() error
}

// Plugin is what every Vigil plugin implements. Each method takes a context
// and returns an error; the host treats an error as the plugin's answer and
// never as a reason to stop itself.
type Plugin interface {
	// Info returns the plugin's identity.
	Info(ctx context.Context) (Info, error)
	// DefaultConfig returns a new config filled with the defaults. The SDK
	// decodes the host's JSON strictly over it, so a config only needs the
	// keys it changes.
	DefaultConfig(ctx context.Context) (Config, error)
	// Configure applies a decoded and validated config. It is called before
	// Run and again whenever the config changes while running. On error the
	// plugin must keep its previous config.
	Configure(ctx context.Context, cfg Config) error
	// Run does the plugin's work, emitting events, until ctx is cancelled.
	// Returning an error (or panicking) ends the plugin process; the host
	// restarts it with backoff.
	Run(ctx context.Context, em Emitter) error
	// Shutdown releases resources before the process exits. ctx carries the
	// host's deadline.
	Shutdown(ctx context.Context) error
}

// TaskRequest is one piece of on-demand work sent by the host.
type TaskRequest struct {
	ID   string
	Name string
	Args json.RawMessage
}

// Tasker is implemented by plugins that accept on-demand tasks.
type Tasker interface {
	Task(ctx context.Context, req TaskRequest) (json.RawMessage, error)
}

// Factory makes a new plugin instance with the logger go-plugin relays into
// the host's log. It is called once per process.
type Factory func(log hclog.Logger) Plugin
