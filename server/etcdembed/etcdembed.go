// Package etcdembed runs the single-member etcd that vigil-server embeds by
// default: data under one directory, the client URL on loopback, optional
// TLS with client-certificate authentication (the certificate's common name
// is the etcd user).
package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/vigil-hids/vigil/server/pki"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Defaults.
const (
	DefaultClientURL       = "http://127.0.0.1:2379"
	DefaultPeerURL         = "http://127.0.0.1:2380"
	DefaultMaxRequestBytes = embed.DefaultMaxRequestBytes
	DefaultStartTimeout    = 60 * time.Second
	DefaultCloseTimeout    = 10 * time.Second
)

// Config configures the embedded etcd. Zero values mean the defaults.
type Config struct {
	// Name of the member; "" means "vigil".
	Name string
	// DataDir holds the member's data (required).
	DataDir string
	// ClientURL and PeerURL are where the member listens; a port of 0
	// picks a free loopback port (tests). With TLS the client scheme
	// becomes https.
	ClientURL string
	PeerURL   string
	// TLS, if set, serves clients over TLS and requires a client
	// certificate signed by TLS.CA.
	TLS pki.Files
	// MaxRequestBytes is etcd's request limit (--max-request-bytes).
	MaxRequestBytes uint
	// StartTimeout bounds how long the member may take to become ready.
	StartTimeout time.Duration
	// Logger receives etcd's own logs; nil discards them.
	Logger *zap.Logger
}

// Validate checks cfg without side effects.
func (c Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data-dir is required for the embedded etcd"))
	}
	for _, u := range []struct{ key, val string }{{"etcd-client-url", c.ClientURL}, {"etcd-peer-url", c.PeerURL}} {
		if u.val == "" {
			continue
		}
		p, err := url.Parse(u.val)
		if err != nil || p.Host == "" {
			errs = append(errs, fmt.Errorf("%s must be a URL such as http://127.0.0.1:2379 (got %q)", u.key, u.val))
		}
	}
	if c.MaxRequestBytes != 0 && (c.MaxRequestBytes < 64<<10 || c.MaxRequestBytes > 64<<20) {
		errs = append(errs, fmt.Errorf("etcd-max-request-bytes must be between 65536 and 67108864 (got %d)", c.MaxRequestBytes))
	}
	if err := c.TLS.Validate("etcd-tls"); err != nil {
		errs = append(errs, err)
	}
	if !c.TLS.Empty() && c.TLS.Cert == "" {
		errs = append(errs, errors.New("etcd-tls-cert and etcd-tls-key are required to serve TLS"))
	}
	return errors.Join(errs...)
}

// Server is a running embedded etcd.
type Server struct {
	etcd      *embed.Etcd
	endpoint  string
	errc      chan error
	closeOnce sync.Once
	done      chan struct{}
	wg        sync.WaitGroup
}

// Start validates cfg, starts the member and waits until it serves. On any
// failure nothing is left running.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Name == "" {
		cfg.Name = "vigil"
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = DefaultClientURL
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = DefaultPeerURL
	}
	if cfg.MaxRequestBytes == 0 {
		cfg.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	scheme := "http"
	if !cfg.TLS.Empty() {
		scheme = "https"
	}
	curl, err := resolve(cfg.ClientURL, scheme)
	if err != nil {
		return nil, err
	}
	purl, err := resolve(cfg.PeerURL, "http")
	if err != nil {
		return nil, err
	}
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.DataDir
	ec.LogLevel = "error"
	ec.Logger = "zap"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(cfg.Logger)
	ec.ListenClientUrls = []url.URL{curl}
	ec.AdvertiseClientUrls = []url.URL{curl}
	ec.ListenPeerUrls = []url.URL{purl}
	ec.AdvertisePeerUrls = []url.URL{purl}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.MaxRequestBytes = cfg.MaxRequestBytes
	// etcd formats every unary request slower than this as text for a
	// warning (logUnaryRequestStats) before the logger, at level error,
	// drops it; on a saturated member that is every request (0.8–2.7 % of
	// a member's CPU in the 20,000-host profiles, docs/scale.md).
	ec.WarningUnaryRequestDuration = time.Hour
	if !cfg.TLS.Empty() {
		ec.ClientTLSInfo = transport.TLSInfo{
			CertFile:       cfg.TLS.Cert,
			KeyFile:        cfg.TLS.Key,
			TrustedCAFile:  cfg.TLS.CA,
			ClientCertAuth: true,
		}
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("etcdembed: starting etcd in %s: %w", cfg.DataDir, err)
	}
	t := time.NewTimer(cfg.StartTimeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcdembed: etcd failed while starting: %w", err)
	case <-t.C:
		e.Close()
		return nil, fmt.Errorf("etcdembed: etcd not ready after %s", cfg.StartTimeout)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("etcdembed: starting etcd: %w", ctx.Err())
	}
	s := &Server{etcd: e, endpoint: curl.String(), errc: make(chan error, 1), done: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case err, ok := <-e.Err():
			if ok && err != nil {
				s.errc <- fmt.Errorf("etcdembed: %w", err)
			}
		case <-s.done:
		}
	}()
	return s, nil
}

// resolve sets the scheme and replaces a port of 0 by a free loopback port.
func resolve(raw, scheme string) (url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return url.URL{}, fmt.Errorf("etcdembed: %q: %w", raw, err)
	}
	u.Scheme = scheme
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return url.URL{}, fmt.Errorf("etcdembed: %q: %w", raw, err)
	}
	if port == "0" {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return url.URL{}, fmt.Errorf("etcdembed: finding a free port on %s: %w", host, err)
		}
		port = strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
		_ = l.Close()
		u.Host = net.JoinHostPort(host, port)
	}
	return *u, nil
}

// Endpoint is the client URL.
func (s *Server) Endpoint() string { return s.endpoint }

// Ready is closed once the member serves (always, after Start returns).
func (s *Server) Ready() <-chan struct{} { return s.etcd.Server.ReadyNotify() }

// Err reports a fatal etcd error.
func (s *Server) Err() <-chan error { return s.errc }

// Close stops the member gracefully (etcd's own Close bounds it) and is
// safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.etcd.Close()
		s.wg.Wait()
	})
}
