// Command vigil-server is Vigil's fleet server: etcd embedded by default,
// the HTTP JSON API vigilctl uses, and /metrics. `vigil-server init`
// creates a development PKI and bootstraps etcd RBAC. See docs/server.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/version"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server"
	"github.com/vigil-hids/vigil/server/etcdembed"
	"github.com/vigil-hids/vigil/server/etcdrbac"
	"github.com/vigil-hids/vigil/server/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "vigil-server:", err)
		os.Exit(1)
	}
}

type flags struct {
	cfg           server.Config
	tlsDir        string
	etcdEndpoints string
	logLevel      string
	cells         []string
	compact       time.Duration // --compact-interval, 0 = off
}

func (f *flags) config() (server.Config, error) {
	cfg := f.cfg
	if f.tlsDir != "" {
		if cfg.TLS.CA == "" {
			cfg.TLS.CA = filepath.Join(f.tlsDir, "ca.crt")
		}
		if cfg.TLS.Cert == "" {
			cfg.TLS.Cert = filepath.Join(f.tlsDir, "server.crt")
		}
		if cfg.TLS.Key == "" {
			cfg.TLS.Key = filepath.Join(f.tlsDir, "server.key")
		}
	}
	if f.etcdEndpoints != "" {
		cfg.EtcdEndpoints = strings.Split(f.etcdEndpoints, ",")
	}
	for _, v := range f.cells {
		c, err := parseCell(v)
		if err != nil {
			return cfg, err
		}
		cfg.Cells = append(cfg.Cells, c)
	}
	var err error
	if cfg.CompactInterval, err = compactInterval(f.compact); err != nil {
		return cfg, err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.logLevel)); err != nil {
		return cfg, fmt.Errorf("log-level must be debug, info, warn or error (got %q)", f.logLevel)
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	cfg.CheckPlugin = catalog.Validate
	return cfg, nil
}

// MinCompactInterval is the shortest --compact-interval: a watcher further
// behind than the interval is cut off and must read afresh.
const MinCompactInterval = time.Minute

// compactInterval turns --compact-interval into Config.CompactInterval:
// 0 turns compaction off, otherwise at least MinCompactInterval.
func compactInterval(d time.Duration) (time.Duration, error) {
	switch {
	case d == 0:
		return server.CompactOff, nil
	case d < MinCompactInterval:
		return 0, fmt.Errorf("compact-interval must be 0 (off) or at least %s (got %s)", MinCompactInterval, d)
	}
	return d, nil
}

// parseCell parses a --cell value, NAME=URL[,URL...].
func parseCell(v string) (server.CellConfig, error) {
	name, urls, ok := strings.Cut(v, "=")
	if !ok || !api.ValidName(name) || urls == "" {
		return server.CellConfig{}, fmt.Errorf("cell must be NAME=URL[,URL...] with NAME letters, digits, '.', '-', '_' (got %q)", v)
	}
	c := server.CellConfig{Name: name}
	for _, u := range strings.Split(urls, ",") {
		if u == "" {
			return server.CellConfig{}, fmt.Errorf("cell %s: empty endpoint in %q", name, v)
		}
		c.Endpoints = append(c.Endpoints, u)
	}
	return c, nil
}

func addEtcdFlags(c *cobra.Command, f *flags) {
	fs := c.Flags()
	fs.StringVar(&f.cfg.DataDir, "data-dir", "/var/lib/vigil-server", "embedded etcd data directory")
	fs.StringVar(&f.cfg.EtcdClientURL, "etcd-client-url", etcdembed.DefaultClientURL, "embedded etcd client URL (loopback)")
	fs.StringVar(&f.cfg.EtcdPeerURL, "etcd-peer-url", etcdembed.DefaultPeerURL, "embedded etcd peer URL (loopback)")
	fs.StringVar(&f.etcdEndpoints, "etcd-endpoints", "", "external etcd endpoints, comma-separated (instead of the embedded etcd)")
	fs.StringVar(&f.cfg.EtcdTLS.CA, "etcd-ca", "", "CA of the external etcd")
	fs.StringVar(&f.cfg.EtcdTLS.Cert, "etcd-cert", "", "client certificate for the external etcd (CN vigil-server)")
	fs.StringVar(&f.cfg.EtcdTLS.Key, "etcd-key", "", "client key for the external etcd")
	fs.UintVar(&f.cfg.EtcdMaxRequestBytes, "etcd-max-request-bytes", etcdembed.DefaultMaxRequestBytes, "etcd's request limit; writes are checked against it first")
	fs.StringVar(&f.cfg.Prefix, "prefix", api.DefaultPrefix, "etcd keyspace prefix")
	fs.StringVar(&f.tlsDir, "tls-dir", "", "directory with ca.crt, server.crt, server.key (from init)")
	fs.StringVar(&f.cfg.TLS.CA, "tls-ca", "", "CA that signs API client certificates")
	fs.StringVar(&f.cfg.TLS.Cert, "tls-cert", "", "API server certificate")
	fs.StringVar(&f.cfg.TLS.Key, "tls-key", "", "API server key")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
}

func newRoot() *cobra.Command {
	f := &flags{}
	root := &cobra.Command{
		Use:           "vigil-server",
		Short:         "Vigil fleet server: embedded etcd, HTTP API, metrics",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			return serve(c.Context(), cfg)
		},
	}
	addEtcdFlags(root, f)
	fs := root.Flags()
	fs.StringVar(&f.cfg.Listen, "listen", server.DefaultListen, "API address")
	fs.StringVar(&f.cfg.ID, "id", "", "replica id (default host name and pid)")
	fs.StringVar(&f.cfg.MetricsListen, "metrics-listen", "", "also serve /metrics alone over plain HTTP on this address (no client certificate needed)")
	fs.BoolVar(&f.cfg.Insecure, "insecure", false, "development only: plain HTTP on loopback, every caller an admin named anonymous")
	fs.DurationVar(&f.cfg.LeaseTTL, "lease-ttl", server.DefaultLeaseTTL, "replica registration lease")
	fs.StringVar(&f.cfg.CellName, "cell-name", server.DefaultCellName, "name of the default cell (the embedded etcd or --etcd-endpoints) when --cell is given")
	fs.StringArrayVar(&f.cells, "cell", nil, "a further cell: NAME=URL[,URL...] of an external etcd cluster, reached with the --etcd-ca/--etcd-cert/--etcd-key TLS (repeatable)")
	fs.DurationVar(&f.cfg.AggregateInterval, "aggregate-interval", server.DefaultAggregateInterval, "fleet aggregation and health check interval")
	fs.DurationVar(&f.compact, "compact-interval", server.DefaultCompactInterval,
		"the leader compacts every cell's etcd keyspace this often, at the revision of one interval earlier (0 = off, e.g. when etcd runs --auto-compaction-retention; minimum 1m)")
	addReleaseFlags(root, f)
	addVulnFlags(root, f)
	addEventsFlags(root, f)
	root.AddCommand(newInit())
	return root
}

func serve(ctx context.Context, cfg server.Config) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	s, err := server.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	defer reloadOnHUP(s, cfg.Logger)()
	select {
	case <-ctx.Done():
		cfg.Logger.Info("shutting down", "component", "server")
		return nil
	case err := <-s.Err():
		return err
	}
}

func newInit() *cobra.Command {
	f := &flags{}
	var dir string
	var hosts []string
	var noRBAC bool
	var rootUser, rootPasswordFile string
	c := &cobra.Command{
		Use:   "init --dir DIR",
		Short: "Create a development CA and certificates, and bootstrap etcd RBAC",
		Long: `init writes into DIR a development CA (ca.crt, ca.key), a server certificate
for loopback names (server.crt), and client certificates whose common name is
the identity and organizational unit the role: admin, operator, auditor and
host (CN vigil-host). It then bootstraps etcd RBAC on the embedded etcd under
--data-dir, or on --etcd-endpoints: roles per key prefix, users named like the
certificates' common names, a root user whose password goes to
DIR/etcd-root-password, and enables authentication.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if dir == "" {
				return errors.New("--dir is required")
			}
			written, err := pki.Init(dir, pki.Options{Hosts: hosts})
			for _, p := range written {
				fmt.Fprintln(c.OutOrStdout(), "wrote", p)
			}
			if err != nil {
				return err
			}
			if noRBAC {
				return nil
			}
			f.tlsDir = dir
			cfg, err := f.config()
			if err != nil {
				return err
			}
			return bootstrap(c, cfg, dir, rootUser, rootPasswordFile)
		},
	}
	addEtcdFlags(c, f)
	fs := c.Flags()
	fs.StringVar(&dir, "dir", "", "directory for the CA, certificates and keys")
	fs.StringSliceVar(&hosts, "host", nil, "extra DNS name or IP for the server certificate (repeatable)")
	fs.BoolVar(&noRBAC, "no-rbac", false, "only create the certificates")
	fs.StringVar(&rootUser, "etcd-user", "", "etcd user to bootstrap as, when auth is already on (root)")
	fs.StringVar(&rootPasswordFile, "etcd-password-file", "", "file holding that user's password")
	return c
}

func bootstrap(c *cobra.Command, cfg server.Config, dir, user, passwordFile string) error {
	ctx, cancel := context.WithTimeout(c.Context(), 2*time.Minute)
	defer cancel()
	endpoints, etcdTLS := cfg.EtcdEndpoints, cfg.EtcdTLS
	if len(endpoints) == 0 {
		e, err := etcdembed.Start(ctx, etcdembed.Config{DataDir: cfg.DataDir, ClientURL: cfg.EtcdClientURL,
			PeerURL: cfg.EtcdPeerURL, TLS: cfg.TLS, MaxRequestBytes: cfg.EtcdMaxRequestBytes})
		if err != nil {
			return err
		}
		defer e.Close()
		endpoints, etcdTLS = []string{e.Endpoint()}, cfg.TLS
	}
	cc := clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if !etcdTLS.Empty() {
		tc, err := etcdTLS.ClientConfig()
		if err != nil {
			return err
		}
		cc.TLS = tc
	}
	if user != "" {
		pw, err := os.ReadFile(passwordFile)
		if err != nil {
			return fmt.Errorf("reading etcd-password-file: %w", err)
		}
		cc.Username, cc.Password = user, strings.TrimSpace(string(pw))
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return err
	}
	defer cli.Close()
	res, err := etcdrbac.Bootstrap(ctx, cli, api.NewKeyspace(cfg.Prefix))
	if err != nil {
		return err
	}
	if res.RootPassword != "" {
		p := filepath.Join(dir, "etcd-root-password")
		if err := os.WriteFile(p, []byte(res.RootPassword+"\n"), 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
		fmt.Fprintln(c.OutOrStdout(), "wrote", p)
	}
	for _, r := range etcdrbac.Roles(api.NewKeyspace(cfg.Prefix)) {
		var g []string
		for _, p := range r.Grants {
			g = append(g, p.String())
		}
		fmt.Fprintf(c.OutOrStdout(), "etcd user %s, role %s: %s\n", r.User, r.Name, strings.Join(g, ", "))
	}
	if res.AlreadyEnabled {
		fmt.Fprintln(c.OutOrStdout(), "etcd authentication was already enabled")
	} else {
		fmt.Fprintln(c.OutOrStdout(), "etcd authentication enabled")
	}
	return nil
}
