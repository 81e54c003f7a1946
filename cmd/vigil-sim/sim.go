package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/control"
)

// Options configure one simulation run.
type Options struct {
	Hosts     int
	Clients   int
	Groups    int // group labels per host (0 to 3)
	Endpoints []string
	// Cluster > 0 starts a cell of that many etcd members, one child
	// process each (EtcdBin, or this binary with -serve-member).
	Cluster int
	EtcdBin string
	// Partition hosts more run in a network namespace of their own for
	// the partition scenario (needs Cluster > 0 and root).
	Partition int
	// GRPCProxies > 0 puts that many etcd gRPC proxies (GRPCProxyBin
	// grpc-proxy start) between the hosts and the cell.
	GRPCProxies  int
	GRPCProxyBin string
	// Heartbeat and Election are the members' raft timings (0: etcd's
	// defaults, 100ms and 1s).
	Heartbeat, Election time.Duration
	// MemberGOGC is the GOGC of the member processes (0: Go's default;
	// -1: off, collecting only near MemberMemLimit).
	MemberGOGC int
	// MemberMemLimit is the GOMEMLIMIT of the member processes ("": none),
	// e.g. "4GiB".
	MemberMemLimit string
	// MemberLog is the members' log level ("": they log nothing); with
	// KeepCell the logs (and data) stay in the cell's directory.
	MemberLog string
	KeepCell  bool
	// MemberGOMAXPROCS is the GOMAXPROCS of the member processes: 0 (the
	// default) is Go's default, every core; -1 each member's share of this
	// machine's cores, at least 1.
	MemberGOMAXPROCS int
	// ServerBin, with Cluster, runs this vigil-server binary against the
	// cell (server.go): its RSS and CPU are reported, and stop and resume
	// also poll its fleet progress answer.
	ServerBin string
	// Idle is how long the idle scenario lets the fleet sit.
	Idle time.Duration
	// Settle is the pause before each scenario after registration, so
	// that each starts on a fleet at rest: the previous scenario's
	// trailing work (the cell's batch commits, the simulator's garbage,
	// stragglers) is not billed to the next. Zero: back to back.
	Settle time.Duration
	// RolloutMB and RolloutWindow shape the rollout scenario.
	RolloutMB     int
	RolloutWindow time.Duration
	// DataDir of the embedded etcd when Endpoints is empty ("" = temp dir).
	DataDir        string
	NoFsync        bool
	Prefix         string
	LeaseTTL       time.Duration
	RequestTimeout time.Duration
	StatusInterval time.Duration
	Spread         time.Duration
	AckSpread      time.Duration
	// LeaderProbe is control.leader_probe (0: the control default).
	LeaderProbe time.Duration
	Scenarios   []string
	Pushes      int
	// ObserverWatches splits the observer's watch of the agent prefix
	// into this many sub-ranges, each on a connection of its own.
	ObserverWatches int
	// ObserverProcess measures the stop, resume and leader-loss scenarios from an
	// observer process of its own (-serve-observer) instead of a watch in
	// this process, which also runs every host loop.
	ObserverProcess bool
	Offline         int
	Seed            uint64
	// ProfileDir receives CPU profiles of the simulator and of each
	// member over ProfileWindow from the write of every stop, resume and
	// leader-loss scenario.
	ProfileDir    string
	ProfileWindow time.Duration
	Log           *slog.Logger
}

// DefaultOptions are the flags' defaults: the figures of docs/scale.md.
func DefaultOptions() Options {
	return Options{
		Hosts:            10000,
		Clients:          16,
		Groups:           2,
		LeaseTTL:         15 * time.Second,
		RequestTimeout:   10 * time.Second, // control.request_timeout's default
		StatusInterval:   10 * time.Second,
		Scenarios:        []string{"register", "stop", "resume", "push", "offline"},
		Pushes:           200,
		Offline:          1000,
		Seed:             1,
		ProfileWindow:    10 * time.Second,
		MemberGOGC:       400,
		MemberGOMAXPROCS: 0,
		Idle:             30 * time.Second,
		Settle:           10 * time.Second,
		RolloutMB:        20,
		RolloutWindow:    60 * time.Second,
		ObserverProcess:  true,
	}
}

// Validate names every bad option.
func (o Options) Validate() error {
	var errs []error
	if o.Hosts < 1 || o.Hosts > 1_000_000 {
		errs = append(errs, fmt.Errorf("-hosts must be between 1 and 1000000 (got %d)", o.Hosts))
	}
	if o.Clients < 1 || o.Clients > o.Hosts {
		errs = append(errs, fmt.Errorf("-clients must be between 1 and -hosts (got %d)", o.Clients))
	}
	if o.Groups < 0 || o.Groups > 3 {
		errs = append(errs, fmt.Errorf("-groups must be between 0 and 3 (got %d)", o.Groups))
	}
	if o.Offline < 0 || o.Offline > o.Hosts {
		errs = append(errs, fmt.Errorf("-offline must be between 0 and -hosts (got %d)", o.Offline))
	}
	if o.RolloutMB < 1 || o.RolloutMB > 1024 {
		errs = append(errs, fmt.Errorf("-rollout-mb must be between 1 and 1024 (got %d)", o.RolloutMB))
	}
	if o.Pushes < 0 {
		errs = append(errs, fmt.Errorf("-pushes must be at least 0 (got %d)", o.Pushes))
	}
	if o.Cluster < 0 || o.Cluster > 7 {
		errs = append(errs, fmt.Errorf("-cluster must be between 0 and 7 (got %d)", o.Cluster))
	}
	if o.Partition < 0 || (o.Partition > 0 && o.Cluster == 0) {
		errs = append(errs, fmt.Errorf("-partition must be 0, or more with -cluster (got %d)", o.Partition))
	}
	if o.GRPCProxies < 0 || (o.GRPCProxies > 0 && o.Cluster == 0) {
		errs = append(errs, fmt.Errorf("-grpc-proxy must be 0, or more with -cluster (got %d)", o.GRPCProxies))
	}
	if o.Settle < 0 {
		errs = append(errs, fmt.Errorf("-settle must be at least 0 (got %s)", o.Settle))
	}
	if o.MemberGOGC < -1 {
		errs = append(errs, fmt.Errorf("-member-gogc must be -1 (off), 0 (Go's default) or a percentage (got %d)", o.MemberGOGC))
	}
	if o.MemberGOGC == -1 && o.MemberMemLimit == "" {
		errs = append(errs, errors.New("-member-gogc -1 needs -member-memlimit (without a limit the members' heap would grow without bound)"))
	}
	if o.MemberMemLimit != "" && !memLimitRE.MatchString(o.MemberMemLimit) {
		errs = append(errs, fmt.Errorf("-member-memlimit %q is not a size GOMEMLIMIT takes (e.g. 4GiB, 512MiB)", o.MemberMemLimit))
	}
	if o.ServerBin != "" && o.Cluster == 0 {
		errs = append(errs, errors.New("-server-bin needs -cluster (the server runs against the simulator's cell)"))
	}
	if o.Cluster > 0 && len(o.Endpoints) > 0 {
		errs = append(errs, errors.New("-cluster and -endpoints exclude each other"))
	}
	known := map[string]bool{"register": true, "stop": true, "resume": true, "push": true, "offline": true, "leader-loss": true, "partition": true, "idle": true, "rollout": true, "ackcost": true}
	for _, s := range o.Scenarios {
		if !known[s] {
			errs = append(errs, fmt.Errorf("-scenarios: unknown scenario %q (want register, stop, resume, push, offline, leader-loss, partition, idle, rollout, ackcost)", s))
		}
		if s == "rollout" && len(o.Scenarios) != 1 {
			errs = append(errs, errors.New("-scenarios rollout runs alone (it needs no etcd)"))
		}
		if s == "partition" && o.Partition == 0 {
			errs = append(errs, errors.New("-scenarios partition needs -partition N (hosts in the cut-off namespace)"))
		}
		if s == "leader-loss" && o.Cluster < 3 {
			errs = append(errs, errors.New("-scenarios leader-loss needs -cluster 3 or more (the simulator must own the members to kill the leader)"))
		}
	}
	return errors.Join(errs...)
}

// Result is one scenario's measurement. Durations are in milliseconds.
type Result struct {
	Scenario string  `json:"scenario"`
	Hosts    int     `json:"hosts"`
	Count    int     `json:"count"` // hosts or pushes measured
	Done     int     `json:"done"`  // of Count, how many completed
	TotalMS  float64 `json:"total_ms"`
	P50MS    float64 `json:"p50_ms"`
	P99MS    float64 `json:"p99_ms"`
	MaxMS    float64 `json:"max_ms"`
	Target   string  `json:"target"`
	Met      bool    `json:"met"`
	Note     string  `json:"note,omitempty"`
	// Load1 is the machine's 1-minute load average when the scenario began.
	Load1 float64 `json:"load1"`
}

// Report is the whole run.
type Report struct {
	Hosts      int       `json:"hosts"`
	Clients    int       `json:"clients"`
	Groups     int       `json:"groups"`
	LeaseTTL   string    `json:"lease_ttl"`
	Spread     string    `json:"spread"`
	AckSpread  string    `json:"ack_spread"`
	Etcd       string    `json:"etcd"`
	Results    []Result  `json:"results"`
	Goroutines int       `json:"goroutines"`
	MaxRSSMB   float64   `json:"max_rss_mb"`
	CPUSeconds float64   `json:"cpu_seconds"`
	Started    time.Time `json:"started"`
	Cluster    int       `json:"cluster"`
	// EtcdAfterRegister and EtcdAtEnd are the members' RSS and CPU time
	// (cells started by the simulator only).
	EtcdAfterRegister []MemberStat `json:"etcd_after_register,omitempty"`
	EtcdAtEnd         []MemberStat `json:"etcd_at_end,omitempty"`
	// SimAfterRegister is the simulator's RSS (MiB) and CPU (s) once every
	// host registered.
	SimAfterRegisterRSSMB float64 `json:"sim_after_register_rss_mb"`
	SimAfterRegisterCPU   float64 `json:"sim_after_register_cpu_s"`
	// LeaderChanges counts leader changes seen by polling every second
	// (kills by leader-loss included); LeaderlessPolls the polls that
	// found no leader.
	LeaderChanges   int64 `json:"leader_changes"`
	LeaderlessPolls int64 `json:"leaderless_polls"`
	// AckResends sums the hosts' acknowledgements sent again on a leader
	// change (control.leader_probe); Resyncs their fresh reads after a
	// watch ended; both at the end of the run.
	AckResends int `json:"ack_resends"`
	Resyncs    int `json:"resyncs"`
	// AckFailures sums the hosts' failed (and retried) acknowledgements;
	// AckErrors is the most frequent last errors among the hosts.
	AckFailures int `json:"ack_failures"`
	// MemberGOMAXPROCS is the members' GOMAXPROCS (0: Go's default).
	MemberGOMAXPROCS int `json:"member_gomaxprocs,omitempty"`
	// MemberGOGC and MemberMemLimit are the members' GOGC (-1: off) and
	// GOMEMLIMIT, as run.
	MemberGOGC     int      `json:"member_gogc,omitempty"`
	MemberMemLimit string   `json:"member_memlimit,omitempty"`
	AckErrors      []string `json:"ack_errors,omitempty"`
	// TermAfterRegister and TermEnd are the cell's raft term (as polled):
	// every election raises it, also one that keeps the same leader.
	TermAfterRegister uint64 `json:"term_after_register"`
	TermEnd           uint64 `json:"term_end"`
	Heartbeat         string `json:"heartbeat,omitempty"`
	Election          string `json:"election,omitempty"`
	// ServerBeforeRegister, ServerAfterRegister and ServerAtEnd are the
	// vigil-server process's RSS and CPU (-server-bin): once its API
	// answered and before any host started, once every host registered,
	// and at the end.
	ServerBeforeRegister *MemberStat `json:"server_before_register,omitempty"`
	ServerAfterRegister  *MemberStat `json:"server_after_register,omitempty"`
	ServerAtEnd          *MemberStat `json:"server_at_end,omitempty"`
	LoadStart            string      `json:"load_start"`
	LoadEnd              string      `json:"load_end"`
}

// host is one simulated host: the real control loop and an applier that
// does nothing but remember what it was told.
type host struct {
	name    string
	loop    *control.Loop
	applier *noopApplier
	killed  time.Time
}

// noopApplier acknowledges every state at once; it has no plugins.
type noopApplier struct {
	rev     atomic.Int64
	stopped atomic.Bool
	firstAt atomic.Int64 // UnixNano of the first Apply
	notify  chan int64   // latest applied revision, for the push scenario
}

func newNoopApplier() *noopApplier { return &noopApplier{notify: make(chan int64, 1)} }

func (a *noopApplier) Apply(_ context.Context, rev int64, ds api.DesiredState) error {
	a.firstAt.CompareAndSwap(0, time.Now().UnixNano())
	a.stopped.Store(ds.Stop != nil && *ds.Stop)
	a.rev.Store(rev)
	select {
	case a.notify <- rev:
	default:
		select { // replace a stale value
		case <-a.notify:
		default:
		}
		select {
		case a.notify <- rev:
		default:
		}
	}
	return nil
}

func (a *noopApplier) Status() map[string]api.PluginStatus { return nil }

// Sim is a running simulation.
type Sim struct {
	opts    Options
	log     *slog.Logger
	etcd    *embed.Etcd
	cell    *cell
	stopped bool // the fleet key's current stop value
	// lastFleetRev is the revision of the simulator's last fleet write.
	lastFleetRev int64
	net          *netPart
	part         *partChild
	proxies      *proxies
	server       *serverProc // -server-bin, or nil
	hostEps      []string    // what the hosts connect to (eps, or the proxies)
	// load1AtStart is the load average when the run began.
	load1AtStart float64
	eps          []string
	clients      []*clientv3.Client
	admin        *clientv3.Client // the "server": writes documents, watches agents
	ks           api.Keyspace
	hosts        []*host
	report       Report
	tmpDir       string // removed by Close
	profiled     int    // scenarios profiled so far
}

// NewSim starts etcd (unless endpoints are given) and the clients.
func NewSim(ctx context.Context, o Options) (*Sim, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Prefix == "" {
		o.Prefix = fmt.Sprintf("/vigil-sim-%d", time.Now().UnixNano())
	}
	s := &Sim{opts: o, log: o.Log, ks: api.NewKeyspace(o.Prefix)}
	s.report = Report{Hosts: o.Hosts, Clients: o.Clients, Groups: o.Groups, LeaseTTL: o.LeaseTTL.String(), Spread: o.Spread.String(), AckSpread: o.AckSpread.String(), Started: time.Now().UTC()}
	s.report.Cluster = o.Cluster
	s.report.LoadStart = loadAvg()
	s.eps = o.Endpoints
	if o.Cluster > 0 {
		vethIP := ""
		if o.Partition > 0 {
			n, err := setupNetns()
			if err != nil {
				return nil, err
			}
			s.net, vethIP = n, n.hostIP
		}
		procs := o.MemberGOMAXPROCS
		if procs < 0 {
			// Members on a machine of their own use every core; here
			// they share it, and with every core each member's idle
			// garbage-collection workers take the others' CPU.
			procs = max(1, runtime.NumCPU()/o.Cluster)
		}
		s.report.MemberGOMAXPROCS = procs
		s.report.MemberGOGC, s.report.MemberMemLimit = o.MemberGOGC, o.MemberMemLimit
		c, err := startCell(cellConfig{n: o.Cluster, bin: o.EtcdBin, base: o.DataDir, noFsync: o.NoFsync, vethIP: vethIP,
			heartbeat: o.Heartbeat, election: o.Election, gogc: o.MemberGOGC, memlimit: o.MemberMemLimit, gomaxprocs: procs,
			logLevel: o.MemberLog, keep: o.KeepCell})
		if err != nil {
			s.Close()
			return nil, err
		}
		s.cell, s.eps = c, c.endpoints()
		s.report.Etcd = c.describe()
		s.report.Heartbeat, s.report.Election = o.Heartbeat.String(), o.Election.String()
		if o.ServerBin != "" {
			srv, err := startServer(o.ServerBin, s.eps, o.Prefix, c.dir)
			if err != nil {
				s.Close()
				return nil, err
			}
			s.server = srv
			s.report.Etcd += fmt.Sprintf("; vigil-server %s at %s (log %s)", o.ServerBin, srv.url, srv.logPath)
		}
		if o.GRPCProxies > 0 {
			p, err := startProxies(o.GRPCProxies, o.GRPCProxyBin, s.eps, c.dir)
			if err != nil {
				s.Close()
				return nil, err
			}
			s.proxies, s.hostEps = p, p.urls
			s.report.Etcd += fmt.Sprintf("; hosts through %d gRPC proxies (%s grpc-proxy)", o.GRPCProxies, o.GRPCProxyBin)
		}
	} else if len(s.eps) == 0 {
		if err := s.startEtcd(); err != nil {
			return nil, err
		}
		s.report.Etcd = "embedded 3.7.3, single member, " + map[bool]string{true: "no fsync", false: "fsync"}[o.NoFsync]
	} else {
		s.report.Etcd = "external " + strings.Join(s.eps, ",")
	}
	if s.hostEps == nil {
		s.hostEps = s.eps
	}
	for i := 0; i <= o.Clients; i++ {
		eps := s.hostEps
		if i == o.Clients {
			eps = s.eps // the server talks to the members
		}
		cli, err := clientv3.New(clientv3.Config{
			Endpoints:   eps,
			DialTimeout: 10 * time.Second,
			// No keepalive pings on loopback: a ping answered late by a
			// starved process would drop the connection of every host on
			// this client at once.
			Logger:             zap.NewNop(),
			MaxCallRecvMsgSize: 64 << 20,
		})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("etcd client: %w", err)
		}
		// As host/control does for its own client: wait up to a TTL for
		// a lease's first keepalive answer.
		old := cli.Lease
		cli.Lease = clientv3.NewLeaseFromLeaseClient(clientv3.RetryLeaseClient(cli), cli, o.LeaseTTL)
		_ = old.Close()
		if i == o.Clients {
			s.admin = cli
		} else {
			s.clients = append(s.clients, cli)
		}
	}
	return s, nil
}

func (s *Sim) startEtcd() error {
	dir := s.opts.DataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "vigil-sim-etcd-")
		if err != nil {
			return err
		}
		dir, s.tmpDir = d, d
	}
	cfg := embed.NewConfig()
	cfg.Name = "vigil-sim"
	cfg.Dir = dir
	cfg.UnsafeNoFsync = s.opts.NoFsync
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.QuotaBackendBytes = 8 << 30
	u := func(s string) url.URL { v, _ := url.Parse(s); return *v }
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	c := u(fmt.Sprintf("http://127.0.0.1:%d", ports[0]))
	p := u(fmt.Sprintf("http://127.0.0.1:%d", ports[1]))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{c}, []url.URL{c}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{p}, []url.URL{p}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("starting embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return errors.New("embedded etcd not ready after 60s")
	}
	s.etcd = e
	s.eps = []string{c.String()}
	return nil
}

// Close stops every host, the clients and the embedded etcd.
func (s *Sim) Close() {
	s.part.stop()
	var wg sync.WaitGroup
	for _, h := range s.hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.loop.Abandon() // leases expire with etcd; no revoke storm
		}()
	}
	wg.Wait()
	for _, c := range s.clients {
		_ = c.Close()
	}
	if s.admin != nil {
		_ = s.admin.Close()
	}
	if s.etcd != nil {
		s.etcd.Close()
	}
	s.proxies.close()
	s.server.close()
	if s.cell != nil {
		s.cell.close()
	}
	if s.net != nil {
		s.net.close()
	}
	if s.tmpDir != "" {
		_ = os.RemoveAll(s.tmpDir)
	}
}

func (s *Sim) hostName(i int) string { return fmt.Sprintf("sim-%06d", i) }

func (s *Sim) labels(i int) map[string]string {
	all := []struct{ k, v string }{
		{"env", []string{"prod", "staging", "dev"}[i%3]},
		{"idc", fmt.Sprintf("idc-%d", i%10)},
		{"group", fmt.Sprintf("svc-%d", i%100)},
	}
	m := map[string]string{}
	for _, kv := range all[:s.opts.Groups] {
		m[kv.k] = kv.v
	}
	return m
}

// startHosts starts every simulated host's control loop.
func (s *Sim) startHosts(ctx context.Context) error {
	for i := 0; i < s.opts.Hosts; i++ {
		name := s.hostName(i)
		a := newNoopApplier()
		cfg := control.Config{
			Endpoints:      s.hostEps,
			Prefix:         s.opts.Prefix,
			Host:           name,
			Labels:         s.labels(i),
			Version:        "sim",
			LeaseTTL:       s.opts.LeaseTTL,
			RequestTimeout: s.opts.RequestTimeout,
			StatusInterval: s.opts.StatusInterval,
			Spread:         s.opts.Spread,
			AckSpread:      s.opts.AckSpread,
			LeaderProbe:    s.opts.LeaderProbe,
		}
		l, err := control.Start(ctx, cfg, a, s.log, control.WithClient(s.clients[i%len(s.clients)]))
		if err != nil {
			return fmt.Errorf("host %s: %w", name, err)
		}
		s.hosts = append(s.hosts, &host{name: name, loop: l, applier: a})
	}
	return nil
}

// docValue encodes a desired-state document as the server writes it.
// memLimitRE is what GOMEMLIMIT accepts: a number of bytes with an
// optional B, KiB, MiB, GiB or TiB suffix.
var memLimitRE = regexp.MustCompile(`^[0-9]+(B|KiB|MiB|GiB|TiB)?$`)

func docValue(scope string, ds api.DesiredState, comment string) string {
	b, _ := json.Marshal(api.Document{Scope: scope, Author: "vigil-sim", Time: time.Now().UTC(), Comment: comment, State: ds})
	return string(b)
}

func (s *Sim) put(ctx context.Context, key, val string) (int64, error) {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := s.admin.Put(rctx, key, val)
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// percentiles returns p50, p99 and max of ds in milliseconds.
func percentiles(ds []time.Duration) (p50, p99, mx float64) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(q float64) float64 {
		i := int(q*float64(len(s))+0.5) - 1
		i = min(max(i, 0), len(s)-1)
		return ms(s[i])
	}
	return at(0.50), at(0.99), ms(s[len(s)-1])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
