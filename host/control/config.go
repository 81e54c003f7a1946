package control

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vigil-hids/vigil/api"
)

// Config configures the control loop. Zero fields take the values of
// Default; keys are named as they are written in vigil-host's config file,
// under "control".
type Config struct {
	// Endpoints are the etcd client URLs.
	Endpoints []string `yaml:"endpoints"`
	// CAFile, CertFile and KeyFile enable TLS with a client certificate;
	// all three or none.
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Prefix is the root of Vigil's keyspace (default /hids).
	Prefix string `yaml:"prefix"`
	// Host is the name the host registers under; Labels choose its groups.
	Host   string            `yaml:"host"`
	Labels map[string]string `yaml:"labels"`
	// Version is the agent version written into the registration.
	Version string `yaml:"-"`
	// LeaseTTL is the registration lease's time to live: a host that stops
	// renewing it is seen offline within LeaseTTL (plus etcd's expiry scan).
	// The keepalive renews it every LeaseTTL/3, so a cell of N hosts serves
	// 3N/LeaseTTL renewals a second, each forwarded by a follower to the
	// leader: size it to the cell (docs/scale.md "Tuning": 15 s up to ~5,000
	// hosts, 60–120 s for 20,000).
	LeaseTTL time.Duration `yaml:"lease_ttl"`
	// StateDir keeps the agent identity, the last good desired state and
	// the done tasks. Empty keeps nothing (vigil-sim only): a real host
	// always sets it.
	StateDir string `yaml:"state_dir"`
	// DialTimeout bounds connecting to etcd; RequestTimeout each request.
	DialTimeout    time.Duration `yaml:"dial_timeout"`
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// BackoffInitial and BackoffMax shape the reconnect backoff (capped
	// exponential, jitter seeded by the host name).
	BackoffInitial time.Duration `yaml:"backoff_initial"`
	BackoffMax     time.Duration `yaml:"backoff_max"`
	// OfflineGrace is how long the loop waits at start for etcd before it
	// applies the desired state persisted under StateDir.
	OfflineGrace time.Duration `yaml:"offline_grace"`
	// Spread spreads the first registration, and the first retry after a
	// registration is lost, over this window by a hash of the host name.
	// Size it to the cell: hosts ÷ registrations per second etcd sustains
	// (vigil-sim measures it). Zero: no spread.
	Spread time.Duration `yaml:"spread"`
	// AckSpread delays the acknowledgement of a fleet or group change (not
	// its application, which is immediate) to this host's moment of the
	// window, by a hash of the host name, so that a cell's hosts do not
	// all write at once. Zero: acknowledge at once.
	AckSpread time.Duration `yaml:"ack_spread"`
	// ResyncInterval is how often the desired state is read again from
	// scratch (plus up to half of it, by host hash), in case a watch hangs
	// without an error.
	ResyncInterval time.Duration `yaml:"resync_interval"`
	// LeaderProbe (0: off, the default): an acknowledgement pending
	// longer than this asks the member of the host's watch stream for its
	// raft term (a progress request), again every LeaderProbe, and is sent
	// again at once (once) if the term rose: after an election a write
	// forwarded to the old leader is lost and fails only after etcd's
	// request timeout (~7 s). It cut a leader loss from ~9 s to 3.2 s with
	// 2,000 hosts, but on a saturated cell (20,000 hosts on 2 cores) an
	// election caused by the overload makes every pending acknowledgement
	// write twice, and the runs with it collapsed (docs/scale.md): enable
	// it only on cells with headroom.
	LeaderProbe time.Duration `yaml:"leader_probe"`
	// StatusInterval is how often the plugins' status is polled; the
	// registration is rewritten only when it changed.
	StatusInterval time.Duration `yaml:"status_interval"`
}

// Default returns the defaults that zero fields take.
func Default() Config {
	return Config{
		Prefix:      api.DefaultPrefix,
		LeaseTTL:    15 * time.Second,
		DialTimeout: 5 * time.Second,
		// Longer than etcd's own 7 s for a proposal its leader dropped:
		// on an overloaded cell a write slower than a shorter timeout is
		// abandoned and sent again, which doubles the load where it hurts
		// (docs/scale.md: 20,000 hosts, 5 s vs 10 s).
		RequestTimeout: 10 * time.Second,
		BackoffInitial: 500 * time.Millisecond,
		BackoffMax:     30 * time.Second,
		OfflineGrace:   time.Second,
		StatusInterval: 10 * time.Second,
		ResyncInterval: 10 * time.Minute,
	}
}

// withDefaults returns c with every zero field set from Default.
func (c Config) withDefaults() Config {
	d := Default()
	if c.Prefix == "" {
		c.Prefix = d.Prefix
	}
	setDur := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	setDur(&c.LeaseTTL, d.LeaseTTL)
	setDur(&c.DialTimeout, d.DialTimeout)
	setDur(&c.RequestTimeout, d.RequestTimeout)
	setDur(&c.BackoffInitial, d.BackoffInitial)
	setDur(&c.BackoffMax, d.BackoffMax)
	setDur(&c.OfflineGrace, d.OfflineGrace)
	setDur(&c.StatusInterval, d.StatusInterval)
	setDur(&c.ResyncInterval, d.ResyncInterval)
	return c
}

// Validate reports every invalid field of c (after defaults), naming the
// key, the allowed range and the value found. It touches no file.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if len(c.Endpoints) == 0 {
		errs = append(errs, errors.New("control.endpoints must list at least one etcd URL (got none)"))
	}
	for _, ep := range c.Endpoints {
		if ep == "" {
			errs = append(errs, errors.New("control.endpoints must not contain an empty URL"))
		}
	}
	if !api.ValidName(c.Host) {
		errs = append(errs, fmt.Errorf("control.host must be 1 to 253 letters, digits, '.', '-', '_' not starting with punctuation (got %q)", c.Host))
	}
	for k, v := range c.Labels {
		if !api.ValidName(k) || !api.ValidName(v) {
			errs = append(errs, fmt.Errorf("control.labels must use letters, digits, '.', '-', '_' in names and values (got %q: %q)", k, v))
		}
	}
	set := 0
	for _, f := range []string{c.CAFile, c.CertFile, c.KeyFile} {
		if f != "" {
			set++
		}
	}
	if set != 0 && set != 3 {
		errs = append(errs, fmt.Errorf("control.ca_file, control.cert_file and control.key_file must be set together (got %d of 3)", set))
	}
	rng := func(key string, v, lo, hi time.Duration) {
		if v < lo || v > hi {
			errs = append(errs, fmt.Errorf("control.%s must be between %s and %s (got %s)", key, lo, hi, v))
		}
	}
	rng("lease_ttl", c.LeaseTTL, 2*time.Second, time.Hour)
	rng("dial_timeout", c.DialTimeout, 100*time.Millisecond, time.Minute)
	rng("request_timeout", c.RequestTimeout, 100*time.Millisecond, time.Minute)
	rng("backoff_initial", c.BackoffInitial, 10*time.Millisecond, time.Minute)
	rng("backoff_max", c.BackoffMax, c.BackoffInitial, time.Hour)
	rng("offline_grace", c.OfflineGrace, time.Millisecond, time.Minute)
	rng("status_interval", c.StatusInterval, 100*time.Millisecond, time.Hour)
	rng("resync_interval", c.ResyncInterval, time.Second, 24*time.Hour)
	if c.LeaderProbe != 0 {
		rng("leader_probe", c.LeaderProbe, 100*time.Millisecond, time.Hour)
	}
	if c.AckSpread < 0 || c.AckSpread > time.Minute {
		errs = append(errs, fmt.Errorf("control.ack_spread must be between 0s and 1m0s (got %s)", c.AckSpread))
	}
	if c.Spread < 0 || c.Spread > time.Hour {
		errs = append(errs, fmt.Errorf("control.spread must be between 0s and 1h0m0s (got %s)", c.Spread))
	}
	return errors.Join(errs...)
}

// tlsConfig loads the client certificate and CA, or returns nil without
// TLS.
func (c Config) tlsConfig() (*tls.Config, error) {
	if c.CAFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("reading control.ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("control.ca_file %s holds no PEM certificate", c.CAFile)
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("loading control.cert_file and control.key_file: %w", err)
	}
	return &tls.Config{
		RootCAs:      pool,
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
	}, nil
}
