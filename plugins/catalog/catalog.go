// Package catalog knows the config of every plugin shipped with Vigil, so
// vigil-server can check a plugin config with the plugin's own rules (the
// same strict decoding, tag rules and Validate the plugin runs on the host)
// before it writes anything to etcd. A config is so rejected twice: here,
// and again by the plugin, which keeps its last good config.
//
// Adding a plugin is one line in Configs. catalog imports plugin packages
// only for their config types; their code does not run in the server.
package catalog

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/vigil-hids/vigil/plugins/example"
	"github.com/vigil-hids/vigil/plugins/testplugin"
	"github.com/vigil-hids/vigil/plugins/vulnscan"
	"github.com/vigil-hids/vigil/sdk"
)

// ErrUnknownPlugin is matched by Validate's error for a plugin name the
// catalog does not know.
var ErrUnknownPlugin = errors.New("catalog: unknown plugin")

// Configs maps each known plugin's name to a constructor of its default
// config. It returns a new map on each call, so callers may not change
// what other callers see.
func Configs() map[string]func() sdk.Config {
	return map[string]func() sdk.Config{
		example.Name:    func() sdk.Config { return example.DefaultConfig() },
		testplugin.Name: func() sdk.Config { return testplugin.DefaultConfig() },
		vulnscan.Name:   func() sdk.Config { return vulnscan.DefaultConfig() },
	}
}

// Names returns the known plugin names, sorted.
func Names() []string {
	m := Configs()
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Validate decodes raw strictly over plugin's defaults and checks it as the
// plugin would. An empty raw is the defaults, and valid. Errors name each
// key as "plugin.key".
func Validate(plugin string, raw json.RawMessage) error {
	mk, ok := Configs()[plugin]
	if !ok {
		return fmt.Errorf("%w %q (known: %s)", ErrUnknownPlugin, plugin, strings.Join(Names(), ", "))
	}
	return sdk.DecodeConfig(plugin, raw, mk())
}

// Decode is Validate that also returns the decoded config, with defaults
// filled in, e.g. to show an operator the effective config.
func Decode(plugin string, raw json.RawMessage) (sdk.Config, error) {
	mk, ok := Configs()[plugin]
	if !ok {
		return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownPlugin, plugin, strings.Join(Names(), ", "))
	}
	cfg := mk()
	if err := sdk.DecodeConfig(plugin, raw, cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}
