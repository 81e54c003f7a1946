// Package server assembles vigil-server: etcd (embedded by default, or an
// external cluster), the store, the HTTP API with client-certificate
// authentication, the replica registration and the leader election that
// decides which replica runs the singleton jobs (fleet aggregation for
// /metrics, etcd compaction of every cell).
package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/version"
	"github.com/vigil-hids/vigil/server/auth"
	"github.com/vigil-hids/vigil/server/cells"
	"github.com/vigil-hids/vigil/server/desired"
	"github.com/vigil-hids/vigil/server/etcdembed"
	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/server/metrics"
	"github.com/vigil-hids/vigil/server/pki"
	"github.com/vigil-hids/vigil/server/registry"
	"github.com/vigil-hids/vigil/server/store"
	"github.com/vigil-hids/vigil/server/vulnstore"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Defaults.
const (
	DefaultListen            = "127.0.0.1:8443"
	DefaultLeaseTTL          = 10 * time.Second
	DefaultAggregateInterval = 15 * time.Second
	DefaultShutdownTimeout   = 10 * time.Second
	DefaultDialTimeout       = 5 * time.Second
)

// Config configures a server. Zero values mean the defaults.
type Config struct {
	// ID names this replica under /hids/servers/; "" means host name and pid.
	ID string
	// Listen is the API address.
	Listen string
	// Prefix is the etcd keyspace root ("" means /hids).
	Prefix string
	// DataDir holds the embedded etcd's data (when EtcdEndpoints is empty).
	DataDir string
	// EtcdClientURL and EtcdPeerURL are where the embedded etcd listens.
	EtcdClientURL string
	EtcdPeerURL   string
	// EtcdEndpoints selects an external cluster instead of embedding one.
	EtcdEndpoints []string
	// EtcdTLS is the client TLS to an external cluster. With an embedded
	// etcd and TLS the server's own pair and CA (TLS) are used.
	EtcdTLS pki.Files
	// EtcdMaxRequestBytes is etcd's request limit; desired-state writes
	// are checked against it before they are sent.
	EtcdMaxRequestBytes uint
	// TLS is the API's CA (for client certificates), certificate and key.
	TLS pki.Files
	// MetricsListen, if set, also serves /metrics alone over plain HTTP
	// there, for a Prometheus without a client certificate. The metrics
	// carry label values and counts, never host names.
	MetricsListen string
	// Insecure serves plain HTTP without authentication, treating every
	// caller as an admin named "anonymous". Loopback addresses only.
	Insecure bool
	// LeaseTTL is the replica registration's lease.
	LeaseTTL time.Duration
	// AggregateInterval is how often the leader aggregates the fleet and
	// every replica checks etcd's health.
	AggregateInterval time.Duration
	// CompactInterval is how often the leader compacts every cell's etcd
	// keyspace, at the revision it read one interval earlier (compact.go);
	// 0 means DefaultCompactInterval, CompactOff turns it off.
	CompactInterval time.Duration
	// DialTimeout bounds connecting to etcd; Start fails if etcd does not
	// answer a read within twice this.
	DialTimeout time.Duration
	// ShutdownTimeout bounds graceful shutdown before connections are cut.
	ShutdownTimeout time.Duration
	// CheckPlugin checks plugin configs (plugins/catalog.Validate).
	CheckPlugin desired.PluginValidator
	// Releases configures the artifact store and rollouts (releases.go).
	Releases ReleaseConfig
	// Vuln configures the vulnerability index (vuln.go).
	Vuln VulnConfig
	// Events configures the event ingest (events.go).
	Events EventsConfig
	// CellName names the default cell (this server's etcd, embedded or
	// EtcdEndpoints); "" means "default". It matters only with Cells.
	CellName string
	// Cells are further etcd clusters (cells) the server manages beside
	// the default cell, each reached with EtcdTLS. Fleet-wide stops,
	// counts, lists and fleet/group config go to every cell (httpapi).
	Cells []CellConfig
	// Logger, Registry and Now are injected; nil means discard, a new
	// registry and time.Now.
	Logger   *slog.Logger
	Registry *prometheus.Registry
	Now      func() time.Time
}

// CellConfig is one extra cell: its name and its etcd endpoints.
type CellConfig struct {
	Name      string
	Endpoints []string
}

// DefaultCellName names the default cell when CellName is empty.
const DefaultCellName = "default"

func (c Config) cellName() string {
	if c.CellName == "" {
		return DefaultCellName
	}
	return c.CellName
}

// Validate checks cfg without side effects.
func (c Config) Validate() error {
	var errs []error
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			errs = append(errs, fmt.Errorf("listen must be HOST:PORT (got %q)", c.Listen))
		}
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			errs = append(errs, fmt.Errorf("metrics-listen must be HOST:PORT (got %q)", c.MetricsListen))
		}
	}
	if err := c.Events.validate(); err != nil {
		errs = append(errs, err)
	}
	if len(c.EtcdEndpoints) == 0 && c.DataDir == "" {
		errs = append(errs, errors.New("data-dir is required with the embedded etcd (or give etcd-endpoints)"))
	}
	if c.Insecure {
		if !c.TLS.Empty() {
			errs = append(errs, errors.New("insecure and tls-* options exclude each other"))
		}
		if host, _, err := net.SplitHostPort(c.listen()); err == nil && !isLoopback(host) {
			errs = append(errs, fmt.Errorf("insecure mode serves only loopback addresses (got listen %q)", c.Listen))
		}
	} else {
		if c.TLS.CA == "" || c.TLS.Cert == "" || c.TLS.Key == "" {
			errs = append(errs, errors.New("tls-ca, tls-cert and tls-key are required (run `vigil-server init --dir DIR`), or --insecure on loopback for development"))
		}
	}
	if err := c.EtcdTLS.Validate("etcd"); err != nil {
		errs = append(errs, err)
	}
	if c.LeaseTTL != 0 && (c.LeaseTTL < 2*time.Second || c.LeaseTTL > time.Hour) {
		errs = append(errs, fmt.Errorf("lease-ttl must be between 2s and 1h (got %s)", c.LeaseTTL))
	}
	if c.AggregateInterval != 0 && (c.AggregateInterval < 100*time.Millisecond || c.AggregateInterval > time.Hour) {
		errs = append(errs, fmt.Errorf("aggregate-interval must be between 100ms and 1h (got %s)", c.AggregateInterval))
	}
	if c.CompactInterval < 0 && c.CompactInterval != CompactOff {
		errs = append(errs, fmt.Errorf("compact-interval must be 0 (off) or a positive duration (got %s)", c.CompactInterval))
	}
	seen := map[string]bool{c.cellName(): true}
	if !api.ValidName(c.cellName()) {
		errs = append(errs, fmt.Errorf("cell-name %q must be letters, digits, '.', '-', '_'", c.cellName()))
	}
	for _, cell := range c.Cells {
		switch {
		case !api.ValidName(cell.Name):
			errs = append(errs, fmt.Errorf("cell %q: name must be letters, digits, '.', '-', '_'", cell.Name))
		case seen[cell.Name]:
			errs = append(errs, fmt.Errorf("cell %q: name used twice (the default cell is %q)", cell.Name, c.cellName()))
		}
		seen[cell.Name] = true
		if len(cell.Endpoints) == 0 {
			errs = append(errs, fmt.Errorf("cell %q: no etcd endpoints", cell.Name))
		}
	}
	if c.CheckPlugin == nil {
		errs = append(errs, errors.New("server: no plugin validator (plugins/catalog.Validate) configured"))
	}
	return errors.Join(errs...)
}

func (c Config) listen() string {
	if c.Listen == "" {
		return DefaultListen
	}
	return c.Listen
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Server is a running vigil-server replica.
type Server struct {
	cfg     Config
	log     *slog.Logger
	ks      api.Keyspace
	embed   *etcdembed.Server
	cli     *clientv3.Client
	store   *store.Store
	index   *registry.Index
	cells   *cells.Set         // nil with one cell
	cellCli []*clientv3.Client // the extra cells' clients
	metrics *metrics.Metrics
	compact *metrics.Compaction
	http    *http.Server
	ln      net.Listener
	mhttp   *http.Server
	mln     net.Listener
	started time.Time

	vuln     *vulnstore.Service // nil when disabled (vuln.go)
	vulnStop context.CancelFunc
	vulnWG   sync.WaitGroup

	events *eventsFile // nil when event ingest is off (events.go)

	leader    atomic.Bool
	ready     chan struct{}
	errc      chan error
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// Start validates cfg, starts or connects to etcd, registers the replica,
// joins the election and serves the API. If any step fails, whatever was
// started is stopped again.
func Start(ctx context.Context, cfg Config) (s *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Listen = cfg.listen()
	if cfg.ID == "" {
		h, _ := os.Hostname()
		cfg.ID = fmt.Sprintf("%s-%d", h, os.Getpid())
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.AggregateInterval == 0 {
		cfg.AggregateInterval = DefaultAggregateInterval
	}
	if cfg.CompactInterval == 0 {
		cfg.CompactInterval = DefaultCompactInterval
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.EtcdMaxRequestBytes == 0 {
		cfg.EtcdMaxRequestBytes = etcdembed.DefaultMaxRequestBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s = &Server{cfg: cfg, log: cfg.Logger.With("component", "server", "replica", cfg.ID), ks: api.NewKeyspace(cfg.Prefix),
		ready: make(chan struct{}), errc: make(chan error, 4), started: cfg.Now()}
	defer func() {
		if err != nil {
			s.Close()
			s = nil
		}
	}()
	endpoints, etcdTLS := cfg.EtcdEndpoints, cfg.EtcdTLS
	if len(endpoints) == 0 {
		ec := etcdembed.Config{DataDir: cfg.DataDir, ClientURL: cfg.EtcdClientURL, PeerURL: cfg.EtcdPeerURL,
			MaxRequestBytes: cfg.EtcdMaxRequestBytes}
		if !cfg.Insecure {
			ec.TLS, etcdTLS = cfg.TLS, cfg.TLS
		}
		if s.embed, err = etcdembed.Start(ctx, ec); err != nil {
			return s, err
		}
		endpoints = []string{s.embed.Endpoint()}
		s.log.Info("embedded etcd started", "endpoint", s.embed.Endpoint(), "data_dir", cfg.DataDir)
	}
	cc := clientv3.Config{Endpoints: endpoints, DialTimeout: cfg.DialTimeout, Logger: zap.NewNop(),
		MaxCallSendMsgSize: int(cfg.EtcdMaxRequestBytes) + 64<<10}
	if !etcdTLS.Empty() {
		if cc.TLS, err = etcdTLS.ClientConfig(); err != nil {
			return s, fmt.Errorf("server: etcd TLS: %w", err)
		}
	}
	if s.cli, err = clientv3.New(cc); err != nil {
		return s, fmt.Errorf("server: connecting to etcd %v: %w", endpoints, err)
	}
	s.metrics = metrics.New(cfg.Registry)
	s.compact = metrics.NewCompaction(cfg.Registry)
	cfg.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.index = registry.Start(s.cli, s.ks, cfg.Logger)
	s.store = store.New(s.cli, store.Options{Keyspace: s.ks, Validate: cfg.CheckPlugin, MaxRequestBytes: int(cfg.EtcdMaxRequestBytes),
		Now: cfg.Now, OnWrite: s.metrics.OnWrite, Index: s.index})
	// One read proves etcd answers and that our credentials may read.
	rctx, rcancel := context.WithTimeout(ctx, 2*cfg.DialTimeout)
	_, err = s.cli.Get(rctx, s.ks.ScopeKey(api.Scope{Kind: api.ScopeFleet}))
	rcancel()
	if err != nil {
		return s, fmt.Errorf("server: reading etcd %v: %w", endpoints, err)
	}
	if err := s.setupCells(ctx, cc); err != nil {
		return s, err
	}
	opts := httpapi.Options{Store: s.store, Cells: s.cells, Status: func(ctx context.Context) (any, error) { return s.Status(ctx) },
		Gatherer: cfg.Registry, Logger: cfg.Logger}
	if cfg.Insecure {
		opts.Anonymous = &auth.Identity{Name: "anonymous", Role: auth.Admin}
	}
	if err := s.setupReleases(ctx, &opts); err != nil {
		return s, err
	}
	if err := s.setupVuln(ctx, &opts); err != nil {
		return s, err
	}
	if err := s.setupKeyring(&opts); err != nil {
		return s, err
	}
	if err := s.setupEvents(&opts); err != nil {
		return s, err
	}
	s.http = &http.Server{Handler: httpapi.New(opts), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn)}
	if s.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return s, fmt.Errorf("server: listening on %s: %w", cfg.Listen, err)
	}
	if !cfg.Insecure {
		tc, err := cfg.TLS.ServerConfig()
		if err != nil {
			return s, fmt.Errorf("server: API TLS: %w", err)
		}
		s.ln = tls.NewListener(s.ln, tc)
	}
	if cfg.MetricsListen != "" {
		if s.mln, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			return s, fmt.Errorf("server: listening on %s for metrics: %w", cfg.MetricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
		s.mhttp = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(3)
	go func() {
		defer s.wg.Done()
		if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errc <- fmt.Errorf("server: serving the API: %w", err)
		}
	}()
	go func() { defer s.wg.Done(); s.replicaLoop(runCtx) }()
	if s.mhttp != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.mhttp.Serve(s.mln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.errc <- fmt.Errorf("server: serving metrics: %w", err)
			}
		}()
	}
	go func() { defer s.wg.Done(); s.healthLoop(runCtx) }()
	if s.embed != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			select {
			case err := <-s.embed.Err():
				s.errc <- err
			case <-runCtx.Done():
			}
		}()
	}
	close(s.ready)
	s.log.Info("serving", "listen", s.Addr(), "insecure", cfg.Insecure, "etcd", endpoints)
	return s, nil
}

// MetricsAddr is the plain /metrics address, "" if not enabled.
func (s *Server) MetricsAddr() string {
	if s.mln == nil {
		return ""
	}
	return s.mln.Addr().String()
}

// Addr is the API's address (useful with port 0).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Store is the server's store.
func (s *Server) Store() *store.Store { return s.store }

// IsLeader reports whether this replica holds the election.
func (s *Server) IsLeader() bool { return s.leader.Load() }

// Ready is closed once the API serves.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Err reports fatal errors (the API listener or the embedded etcd failed).
func (s *Server) Err() <-chan error { return s.errc }

// Close shuts the API down gracefully within ShutdownTimeout, then cuts
// the remaining connections, resigns, revokes the replica lease, and stops
// the embedded etcd. It may be called more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		if s.http != nil {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
			if err := s.http.Shutdown(ctx); err != nil {
				s.log.Warn("graceful shutdown timed out; closing connections", "error", err.Error())
				_ = s.http.Close()
			}
			cancel()
		} else if s.ln != nil {
			_ = s.ln.Close()
		}
		if s.mhttp != nil {
			_ = s.mhttp.Close()
		} else if s.mln != nil {
			_ = s.mln.Close()
		}
		if s.cancel != nil {
			s.cancel()
		}
		s.wg.Wait()
		s.closeVuln()
		s.closeEvents()
		if s.index != nil {
			s.index.Close()
		}
		for _, c := range s.cellCli {
			_ = c.Close()
		}
		if s.cli != nil {
			_ = s.cli.Close()
		}
		if s.embed != nil {
			s.embed.Close()
		}
	})
}

// Status reports this replica, the others, the election and etcd.
func (s *Server) Status(ctx context.Context) (httpapi.Status, error) {
	st := httpapi.Status{Replica: s.self(), IsLeader: s.IsLeader(), Replicas: []httpapi.Replica{}}
	resp, err := s.cli.Get(ctx, s.ks.Servers(), clientv3.WithPrefix())
	if err != nil {
		return st, fmt.Errorf("listing replicas: %w", err)
	}
	for _, kv := range resp.Kvs {
		var r httpapi.Replica
		if json.Unmarshal(kv.Value, &r) == nil {
			st.Replicas = append(st.Replicas, r)
		}
	}
	lr, err := s.cli.Get(ctx, s.ks.Election(), clientv3.WithFirstCreate()...)
	if err == nil && len(lr.Kvs) > 0 {
		st.ElectionLeader = string(lr.Kvs[0].Value)
	}
	cs, err := s.store.Status(ctx)
	st.Etcd = cs
	if err != nil {
		st.EtcdError = err.Error()
	}
	return st, nil
}

func (s *Server) self() httpapi.Replica {
	return httpapi.Replica{ID: s.cfg.ID, Address: s.Addr(), Version: version.Version, StartedAt: s.started}
}

// setupCells connects to the extra cells (cfg.Cells) with the default
// cell's client settings and EtcdTLS, builds a store per cell and the cell
// set, and checks that no two cells are the same etcd cluster. With no
// extra cell it does nothing.
func (s *Server) setupCells(ctx context.Context, base clientv3.Config) error {
	if len(s.cfg.Cells) == 0 {
		return nil
	}
	list := []cells.Cell{{Name: s.cfg.cellName(), Store: s.store}}
	for _, c := range s.cfg.Cells {
		cc := base
		cc.Endpoints, cc.TLS = c.Endpoints, nil
		if !s.cfg.EtcdTLS.Empty() {
			var err error
			if cc.TLS, err = s.cfg.EtcdTLS.ClientConfig(); err != nil {
				return fmt.Errorf("server: cell %s: etcd TLS: %w", c.Name, err)
			}
		}
		cli, err := clientv3.New(cc)
		if err != nil {
			return fmt.Errorf("server: cell %s: connecting to etcd %v: %w", c.Name, c.Endpoints, err)
		}
		s.cellCli = append(s.cellCli, cli)
		st := store.New(cli, store.Options{Keyspace: s.ks, Validate: s.cfg.CheckPlugin, MaxRequestBytes: int(s.cfg.EtcdMaxRequestBytes),
			Now: s.cfg.Now, OnWrite: s.metrics.OnWrite})
		list = append(list, cells.Cell{Name: c.Name, Store: st})
	}
	set, err := cells.New(list)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 2*s.cfg.DialTimeout)
	defer cancel()
	if err := set.Check(cctx); err != nil {
		return fmt.Errorf("server: checking cells: %w", err)
	}
	s.cells = set
	s.log.Info("cells", "cells", set.Names())
	return nil
}
