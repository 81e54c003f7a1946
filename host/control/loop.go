package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/sdk"
)

// Applier makes the host match a desired state. Apply must be idempotent
// (events repeat and arrive late). It returns an error describing what it
// rejected; everything it did not reject is applied.
type Applier interface {
	Apply(ctx context.Context, rev int64, ds api.DesiredState) error
	// Status reports the plugins' states for the registration value.
	Status() map[string]api.PluginStatus
}

// TaskRunner is implemented by an Applier that can run one-shot tasks.
type TaskRunner interface {
	RunTask(ctx context.Context, t api.Task) error
}

// Errors of the control loop.
var (
	// ErrNameTaken: another agent holds the host's registration key.
	ErrNameTaken = errors.New("control: host name held by another agent")
	// ErrNoTaskRunner: the desired state has tasks but the applier cannot
	// run them.
	ErrNoTaskRunner = errors.New("control: applier cannot run tasks")

	errLeaseLost        = errors.New("control: registration lease lost")
	errRegistrationLost = errors.New("control: registration key replaced or deleted")
	errResync           = errors.New("control: watch ended, reading desired state again")
)

// Option changes how Start builds a Loop.
type Option func(*options)

type options struct {
	client *clientv3.Client
	clock  sdk.Clock
}

// WithClient makes the loop use cli instead of dialing its own client; the
// caller keeps ownership (vigil-sim shares one client among many hosts).
// The TLS and endpoint fields of Config are then ignored.
func WithClient(cli *clientv3.Client) Option { return func(o *options) { o.client = cli } }

// WithClock injects the clock that decides backoff, task spread and the
// offline grace.
func WithClock(c sdk.Clock) Option { return func(o *options) { o.clock = c } }

// Status is a snapshot of the loop for the host's status socket and tests.
type Status struct {
	// Connected is true while the host holds its registration.
	Connected bool
	Lease     clientv3.LeaseID
	Applied   api.Applied
	Stopped   bool
	// FromDisk is true while the applied state is the persisted one.
	FromDisk bool
	// LastError is the most recent connection or registration error.
	LastError string
	// Resyncs counts fresh reads of the whole desired state after a watch
	// ended (compaction, lost leader, closed stream).
	Resyncs int
	// LastResync is why the last fresh read happened.
	LastResync string
	// AckResends counts acknowledgements sent again at once because the
	// cell elected a new leader while they were pending.
	AckResends int
	// AckFailures counts acknowledgements that failed (timeout, etcd too
	// busy, ...) and were retried after a backoff; LastAckError is the
	// last such error.
	AckFailures  int
	LastAckError string
}

// Loop is the running control loop of one host.
type Loop struct {
	cfg       Config
	ks        api.Keyspace
	key       string   // registration key
	keys      []string // desired-state keys in merge order
	applier   Applier
	log       *slog.Logger
	clock     sdk.Clock
	cli       *clientv3.Client
	ownClient bool
	instance  api.Instance
	startedAt time.Time

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	ready     chan struct{}
	readyOnce sync.Once
	errc      chan error
	closeOnce sync.Once
	revoke    bool

	kick chan struct{} // a task finished: rewrite the registration

	applyMu sync.Mutex // serialises Apply and everything it decides

	// spare is a lease granted for a registration that failed, reused by
	// the next attempt while young (owned by the run goroutine).
	spare   clientv3.LeaseID
	spareAt time.Time
	saveMu  sync.Mutex // serialises writes of tasks.json

	mu        sync.Mutex // guards the fields below
	layers    map[string]api.DesiredState
	layerRev  map[string]int64 // revision each layer is known at
	layerErrs map[string]string
	merged    api.DesiredState
	hasMerged bool
	applied   api.Applied
	fromDisk  bool
	persisted *persisted
	done      []string
	doneSet   map[string]bool
	scheduled map[string]bool
	results   []api.TaskResult
	status    Status
	held      *heldReport // reported instead of applied while an ack waits
}

// heldReport is what the registration reports while an acknowledgement
// waits for its moment of Config.AckSpread.
type heldReport struct {
	applied api.Applied
	stopped bool
}

// Start validates cfg, loads the state directory, and starts the loop. It
// returns at once: connecting, registering and applying happen in the
// background (see Ready). A host that cannot reach etcd within
// cfg.OfflineGrace applies its persisted desired state and keeps trying.
func Start(ctx context.Context, cfg Config, applier Applier, log *slog.Logger, opts ...Option) (*Loop, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("control config: %w", err)
	}
	if applier == nil {
		return nil, errors.New("control: nil applier")
	}
	cfg = cfg.withDefaults()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.clock == nil {
		o.clock = sdk.SystemClock()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "control", "host", cfg.Host)

	if cfg.StateDir != "" {
		if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
			return nil, fmt.Errorf("control: creating state dir: %w", err)
		}
	}
	id, err := loadIdentity(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	p, havePersisted, err := loadDesired(cfg.StateDir)
	if err != nil {
		// A torn or foreign file must not keep the host from starting:
		// it will get the desired state from etcd.
		log.Error("ignoring persisted desired state", "err", err)
	}
	done, err := loadDone(cfg.StateDir)
	if err != nil {
		log.Error("ignoring done tasks; tasks may run again", "err", err)
	}

	l := &Loop{
		cfg:       cfg,
		ks:        api.NewKeyspace(cfg.Prefix),
		applier:   applier,
		log:       log,
		clock:     o.clock,
		instance:  api.Instance{ID: id, BootID: bootID(), PID: os.Getpid()},
		ready:     make(chan struct{}),
		errc:      make(chan error, 1),
		kick:      make(chan struct{}, 1),
		layers:    map[string]api.DesiredState{},
		layerRev:  map[string]int64{},
		layerErrs: map[string]string{},
		doneSet:   map[string]bool{},
		scheduled: map[string]bool{},
	}
	l.startedAt = l.clock.Now()
	l.key = l.ks.Agent(cfg.Host)
	for _, s := range api.HostScopes(cfg.Host, cfg.Labels) {
		l.keys = append(l.keys, l.ks.ScopeKey(s))
	}
	if havePersisted {
		l.persisted = &p
	}
	for _, d := range done {
		l.markDoneLocked(d)
	}

	if o.client != nil {
		l.cli = o.client
	} else {
		tlsCfg, err := cfg.tlsConfig()
		if err != nil {
			return nil, fmt.Errorf("control: %w", err)
		}
		cli, err := clientv3.New(clientv3.Config{
			Endpoints:            cfg.Endpoints,
			DialTimeout:          cfg.DialTimeout,
			DialKeepAliveTime:    5 * time.Second,
			DialKeepAliveTimeout: 3 * time.Second,
			TLS:                  tlsCfg,
			Logger:               zap.NewNop(),
		})
		if err != nil {
			return nil, fmt.Errorf("control: etcd client: %w", err)
		}
		// The client waits DialTimeout+1s for a lease's first keepalive
		// answer before it declares the lease lost; a loaded etcd may
		// take longer while the lease is still good for LeaseTTL.
		old := cli.Lease
		cli.Lease = clientv3.NewLeaseFromLeaseClient(clientv3.RetryLeaseClient(cli), cli, cfg.LeaseTTL)
		_ = old.Close()
		l.cli, l.ownClient = cli, true
	}

	l.ctx, l.cancel = context.WithCancel(context.WithoutCancel(ctx))
	l.wg.Add(2)
	go l.offlineFallback()
	go l.run()
	return l, nil
}

// Ready is closed once the host runs on a desired state: the one read from
// etcd, or after OfflineGrace the persisted one.
func (l *Loop) Ready() <-chan struct{} { return l.ready }

// Err delivers the error that ended the loop, if any, and is closed when
// the loop has stopped. Connection trouble is not fatal (the loop retries
// for ever); see Status for the last such error.
func (l *Loop) Err() <-chan error { return l.errc }

// Status returns a snapshot of the loop.
func (l *Loop) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.status
	s.Applied = l.applied
	s.Stopped = l.hasMerged && isStopped(l.merged)
	s.FromDisk = l.fromDisk
	return s
}

// Client returns the loop's etcd client, for reads beside the desired
// state (release manifests). It is closed by Close when the loop dialled
// it.
func (l *Loop) Client() *clientv3.Client { return l.cli }

// Keyspace returns the keyspace the loop works in.
func (l *Loop) Keyspace() api.Keyspace { return l.ks }

// Close stops the loop and revokes the registration lease, so the host is
// seen offline at once. It waits for every goroutine of the loop and is
// idempotent.
func (l *Loop) Close() { l.close(true) }

// Abandon stops the loop like a crash: the lease is not revoked, so the
// registration disappears only when the lease expires (vigil-sim's offline
// detection; a restart in place that reclaims the key). Idempotent, and
// after Close a no-op.
func (l *Loop) Abandon() { l.close(false) }

func (l *Loop) close(revoke bool) {
	l.closeOnce.Do(func() {
		l.cancel()
		l.wg.Wait()
		if lease := l.Status().Lease; revoke && lease != 0 {
			ctx, cancel := context.WithTimeout(context.Background(), l.cfg.RequestTimeout)
			if _, err := l.cli.Revoke(ctx, lease); err != nil {
				l.log.Warn("revoking registration lease", "err", err)
			}
			cancel()
		}
		if l.ownClient {
			_ = l.cli.Close()
		}
		close(l.errc)
	})
}

// run keeps one session (registration, keepalive, desired state) alive,
// reconnecting with capped exponential backoff and jitter seeded by the
// host name.
func (l *Loop) run() {
	defer l.wg.Done()
	defer l.catchPanic()
	b := l.backoff("control")
	// The first registration is spread over Config.Spread by a hash of the
	// host name, so that a cell's hosts starting together do not all hit
	// etcd in the same instant.
	if d := SpreadDelay(l.cfg.Host, "register", l.cfg.Spread); d > 0 {
		if l.clock.Sleep(l.ctx, d) != nil {
			return
		}
	}
	for {
		began := l.clock.Now()
		err := l.session(l.ctx)
		wasConnected := l.Status().Connected
		l.setConnected(0)
		if l.ctx.Err() != nil {
			return
		}
		l.setError(err)
		if l.clock.Now().Sub(began) > l.cfg.BackoffMax {
			b.Reset() // a long good session starts the backoff over
		}
		d := b.Next()
		if wasConnected {
			// Losing a registration is often fleet-wide (etcd restarted or
			// overloaded): come back at a moment of the spread window.
			d = max(d, SpreadDelay(l.cfg.Host, "reconnect", l.cfg.Spread))
		}
		l.log.Warn("control session ended; reconnecting", "err", err, "retry_in", d)
		if l.clock.Sleep(l.ctx, d) != nil {
			return
		}
	}
}

func (l *Loop) catchPanic() {
	if r := recover(); r != nil {
		err := fmt.Errorf("control: loop panicked: %v", r)
		l.log.Error("control loop panicked", "panic", r)
		select {
		case l.errc <- err:
		default:
		}
		l.cancel()
	}
}

// offlineFallback applies the persisted desired state if nothing was
// applied within OfflineGrace: plugins keep running while etcd is away.
func (l *Loop) offlineFallback() {
	defer l.wg.Done()
	l.mu.Lock()
	p := l.persisted
	l.mu.Unlock()
	if p == nil {
		return
	}
	if l.clock.Sleep(l.ctx, l.cfg.OfflineGrace) != nil {
		return
	}
	l.applyMu.Lock()
	defer l.applyMu.Unlock()
	l.mu.Lock()
	already := l.hasMerged
	l.mu.Unlock()
	if already {
		return
	}
	l.log.Warn("etcd unreachable; applying the persisted desired state", "revision", p.Revision, "saved_at", p.SavedAt)
	l.applyLocked(l.ctx, p.Revision, p.State, true, true)
}

func (l *Loop) setError(err error) {
	if err == nil {
		return
	}
	l.mu.Lock()
	l.status.LastError = err.Error()
	l.mu.Unlock()
}

func (l *Loop) setConnected(lease clientv3.LeaseID) {
	l.mu.Lock()
	l.status.Connected = lease != 0
	l.status.Lease = lease
	if lease != 0 {
		l.status.LastError = ""
	}
	l.mu.Unlock()
}

func isStopped(ds api.DesiredState) bool { return ds.Stop != nil && *ds.Stop }

func (l *Loop) markReady() { l.readyOnce.Do(func() { close(l.ready) }) }
