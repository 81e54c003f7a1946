// Package cli implements vigilctl's commands, so that tests run the real
// commands in-process against a real server.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/internal/version"
	"github.com/vigil-hids/vigil/server/client"
	"github.com/vigil-hids/vigil/server/pki"
	"go.yaml.in/yaml/v3"
)

// Exit statuses.
const (
	ExitOK = 0
	// ExitError is any failure: bad input, a refusal, an unreachable server.
	ExitError = 1
	// ExitNotAcknowledged means a --wait ended with hosts that had not
	// acknowledged.
	ExitNotAcknowledged = 2
)

// ErrNotAcknowledged is returned by fleet stop/resume --wait when some
// targeted hosts did not acknowledge in time.
var ErrNotAcknowledged = errors.New("vigilctl: not every targeted host acknowledged")

// Streams are the command's standard streams.
type Streams struct {
	In       io.Reader
	Out, Err io.Writer
}

// FileConfig is ~/.config/vigil/vigilctl.yaml.
type FileConfig struct {
	Server string `yaml:"server"`
	CA     string `yaml:"ca"`
	Cert   string `yaml:"cert"`
	Key    string `yaml:"key"`
}

// DefaultServer is used when no flag, environment or file names one.
const DefaultServer = "https://127.0.0.1:8443"

type globals struct {
	streams    Streams
	env        func(string) string
	configPath string
	server     string
	tls        pki.Files
	output     string
	timeout    time.Duration
}

// Run executes vigilctl with args and returns the exit status.
func Run(args []string, s Streams, env func(string) string) int {
	root := New(s, env)
	root.SetArgs(args)
	err := root.Execute()
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrNotAcknowledged):
		fmt.Fprintln(s.Err, "vigilctl:", err)
		return ExitNotAcknowledged
	default:
		fmt.Fprintln(s.Err, "vigilctl:", err)
		return ExitError
	}
}

// New returns the root command.
func New(s Streams, env func(string) string) *cobra.Command {
	g := &globals{streams: s, env: env}
	root := &cobra.Command{
		Use:           "vigilctl",
		Short:         "Operate a Vigil fleet through vigil-server",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(c *cobra.Command, _ []string) error {
			if g.output != "text" && g.output != "json" {
				return fmt.Errorf("-o must be text or json (got %q)", g.output)
			}
			return nil
		},
	}
	root.SetIn(s.In)
	root.SetOut(s.Out)
	root.SetErr(s.Err)
	pf := root.PersistentFlags()
	pf.StringVar(&g.configPath, "config", "", "config file (default $VIGIL_CONFIG or ~/.config/vigil/vigilctl.yaml)")
	pf.StringVar(&g.server, "server", "", "server URL (env VIGIL_SERVER; default "+DefaultServer+")")
	pf.StringVar(&g.tls.CA, "ca", "", "CA of the server (env VIGIL_CA)")
	pf.StringVar(&g.tls.Cert, "cert", "", "client certificate (env VIGIL_CERT)")
	pf.StringVar(&g.tls.Key, "key", "", "client key (env VIGIL_KEY)")
	pf.StringVarP(&g.output, "output", "o", "text", "output format: text or json")
	pf.DurationVar(&g.timeout, "request-timeout", 30*time.Second, "timeout of each API request")
	root.AddCommand(g.agentsCmd(), g.configCmd(), g.fleetCmd(), g.serverCmd())
	root.AddCommand(g.releaseCmds()...)
	root.AddCommand(g.keyringCmd())
	root.AddCommand(g.vulnCmds()...)
	return root
}

// client resolves flag > environment > config file > default.
func (g *globals) client() (*client.Client, error) {
	path := g.configPath
	if path == "" {
		path = g.env("VIGIL_CONFIG")
	}
	explicit := path != ""
	if path == "" {
		if home := g.env("HOME"); home != "" {
			path = filepath.Join(home, ".config", "vigil", "vigilctl.yaml")
		}
	}
	var fc FileConfig
	if path != "" {
		data, err := os.ReadFile(path)
		switch {
		case err == nil:
			dec := yaml.NewDecoder(bytes.NewReader(data))
			dec.KnownFields(true)
			if err := dec.Decode(&fc); err != nil && err != io.EOF {
				return nil, fmt.Errorf("reading %s: %w", path, err)
			}
		case explicit || !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("reading config: %w", err)
		}
	}
	pick := func(flag, envKey, file, def string) string {
		for _, v := range []string{flag, g.env(envKey), file} {
			if v != "" {
				return v
			}
		}
		return def
	}
	cfg := client.Config{
		Server: pick(g.server, "VIGIL_SERVER", fc.Server, DefaultServer),
		TLS: pki.Files{
			CA:   pick(g.tls.CA, "VIGIL_CA", fc.CA, ""),
			Cert: pick(g.tls.Cert, "VIGIL_CERT", fc.Cert, ""),
			Key:  pick(g.tls.Key, "VIGIL_KEY", fc.Key, ""),
		},
		Timeout: g.timeout,
	}
	return client.New(cfg)
}

func (g *globals) ctx(c *cobra.Command) context.Context {
	if ctx := c.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// emit writes v as JSON with -o json, or calls text otherwise.
func (g *globals) emit(v any, text func(w io.Writer)) error {
	if g.output == "json" {
		enc := json.NewEncoder(g.streams.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	text(g.streams.Out)
	return nil
}
