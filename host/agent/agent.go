// Package agent assembles vigil-host: the event pipeline and its sinks, the
// plugin supervisor, the heartbeat, the status socket and optional metrics.
// It is also the control plane's Applier: a desired state from the fleet is
// laid over the host's config file and handed to the supervisor.
package agent

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/config"
	"github.com/vigil-hids/vigil/host/control"
	"github.com/vigil-hids/vigil/host/governor"
	"github.com/vigil-hids/vigil/host/pipeline"
	"github.com/vigil-hids/vigil/host/procstat"
	"github.com/vigil-hids/vigil/host/sink"
	"github.com/vigil-hids/vigil/host/spawn"
	"github.com/vigil-hids/vigil/host/status"
	"github.com/vigil-hids/vigil/host/supervisor"
	"github.com/vigil-hids/vigil/host/vulnreport"
	"github.com/vigil-hids/vigil/internal/memtrim"
	"github.com/vigil-hids/vigil/sdk"
)

// Options are what the caller injects.
type Options struct {
	Version string
	Log     *slog.Logger
	// PluginLog receives go-plugin's and the plugins' log lines.
	PluginLog hclog.Logger
	// Registry, if set, gets the host's Prometheus metrics.
	Registry *prometheus.Registry
	// SetLogLevel, if set, changes the host's log level at run time (a
	// syslog level name); the fleet's desired state may set it.
	SetLogLevel func(level string) error
	// SelfUpdate, if set, lets the desired HostVersion replace vigil-host's
	// own binary (selfupdate.go).
	SelfUpdate *SelfUpdate
}

// Agent is a running vigil-host.
type Agent struct {
	cfg     config.Config
	opts    Options
	log     *slog.Logger
	started time.Time

	spawner *spawn.Spawner
	pipe    *pipeline.Pipeline
	sup     *supervisor.Manager
	sock    *status.Server
	metrics *http.Server
	hb      *pipeline.HostEmitter
	sinks   []string
	// counted are the sinks that deliver after Write returns; their
	// counts go into the status and the heartbeat.
	counted []sink.Counted
	ctl     *control.Loop
	gov     *governance
	lock    *os.File
	upd     *pluginUpdates       // plugin release installs (update.go), nil when off
	hu      *hostUpdate          // self-update worker (selfupdate.go), nil when off
	vuln    *vulnreport.Reporter // inventory reporter (vuln.go), nil when off

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errc   chan error
	ready  chan struct{}
	once   sync.Once

	mu      sync.Mutex
	desired api.DesiredState
	rev     int64
	// waiting holds the plugins at start while the fleet's desired state
	// (or the persisted copy) is not yet known, so that a host under an
	// emergency stop does not start its plugins for a moment at boot.
	waiting bool
	usage   map[string]usage // last CPU/RSS sample by plugin
	self    usage
}

type usage struct {
	pid  int
	proc *procstat.Proc
	cpu  time.Duration
	at   time.Time
	pct  float64
	rss  uint64
}

// Start validates cfg, builds every part and starts the plugins named in
// the config file. On error, whatever was started is stopped again.
func Start(ctx context.Context, cfg config.Config, opts Options) (_ *Agent, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.PluginLog == nil {
		opts.PluginLog = hclog.NewNullLogger()
	}
	a := &Agent{
		cfg: cfg, opts: opts, log: opts.Log.With("component", "host"),
		started: time.Now(), errc: make(chan error, 1), ready: make(chan struct{}),
		usage: map[string]usage{}, hu: newHostUpdate(opts.SelfUpdate),
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			a.Close()
		}
	}()

	var sinks []sink.Sink
	defer func() {
		if a.pipe == nil {
			// Not handed to a pipeline (a later sink or the pipeline
			// failed): the network sinks' goroutines must not outlive
			// the failed start.
			for _, s := range sinks {
				_ = s.Close()
			}
		}
	}()
	if cfg.Sinks.File != nil {
		if err := os.MkdirAll(filepath.Dir(cfg.Sinks.File.Path), 0o750); err != nil {
			return nil, fmt.Errorf("file sink: %w", err)
		}
		f, err := sink.NewFile(*cfg.Sinks.File, cfg.HostName)
		if err != nil {
			return nil, err
		}
		sinks = append(sinks, f)
		a.sinks = append(a.sinks, "file:"+cfg.Sinks.File.Path)
	}
	if cfg.Sinks.Stdout {
		sinks = append(sinks, sink.NewStdout(cfg.HostName))
		a.sinks = append(a.sinks, "stdout")
	}
	if cfg.Sinks.Kafka != nil {
		k, err := sink.NewKafka(*cfg.Sinks.Kafka, cfg.HostName, opts.Log.With("component", "sink", "sink", "kafka"))
		if err != nil {
			return nil, err
		}
		sinks = append(sinks, k)
		a.sinks = append(a.sinks, cfg.Sinks.Kafka.String())
	}
	if cfg.Sinks.Server != nil {
		link := cfg.ServerLink()
		hc, err := link.HTTPClient(0)
		if err != nil {
			return nil, fmt.Errorf("server sink: %w", err)
		}
		ss, err := sink.NewServer(*cfg.Sinks.Server, cfg.HostName, hc, link.URL, opts.Log.With("component", "sink"))
		if err != nil {
			return nil, err
		}
		sinks = append(sinks, ss)
		a.sinks = append(a.sinks, "server:"+link.URL)
	}
	withVuln, err := a.addVulnSink(sinks)
	if err != nil {
		return nil, err
	}
	sinks = withVuln
	for _, s := range sinks {
		if c, ok := s.(sink.Counted); ok {
			a.counted = append(a.counted, c)
		}
	}
	a.pipe, err = pipeline.New(cfg.Pipeline, sinks, opts.Log.With("component", "pipeline"), nil)
	if err != nil {
		return nil, err
	}
	if err := a.pipe.Start(a.ctx); err != nil {
		return nil, err
	}
	a.hb = a.pipe.HostEmitter(opts.Version)

	// One host per run dir: the lock is taken before anything (cgroup
	// cleanup above all) could touch another running host's plugins.
	if a.lock, err = lockRunDir(cfg.RunDir); err != nil {
		return nil, err
	}
	a.gov, err = startGovernance(a, func() {
		if a.sup != nil {
			a.sup.Poke()
		}
	})
	if err != nil {
		return nil, err
	}
	a.spawner = spawn.New()
	s := cfg.Supervisor
	a.sup, err = supervisor.New(supervisor.Config{
		Options: supervisor.Options{
			HostName: cfg.HostName, HostVersion: opts.Version,
			StartTimeout: s.StartTimeout, CallTimeout: s.CallTimeout, ShutdownTimeout: s.ShutdownTimeout,
			BackoffInitial: s.BackoffInitial, BackoffMax: s.BackoffMax,
			YoungAge: s.YoungAge, QuarantineAfter: s.QuarantineAfter,
		},
		Log:     opts.PluginLog,
		Spawner: a.spawner,
		Hooks: supervisor.Hooks{
			Gate:         a.gate,
			PrepareSpawn: a.gov.prepareSpawn,
			Started:      a.gov.started,
			Exited:       a.gov.exited,
		},
		Events: func(name string) supervisor.EventSink {
			return a.pipe.Register(name, "")
		},
	})
	if err != nil {
		return nil, err
	}
	if opts.Registry != nil {
		if err := a.pipe.RegisterMetrics(opts.Registry); err != nil {
			return nil, err
		}
		if err := opts.Registry.Register(supervisorCollector{a}); err != nil {
			return nil, err
		}
		if err := opts.Registry.Register(governor.NewCollector(a.gov.gov)); err != nil {
			return nil, err
		}
	}
	a.sock, err = status.Listen(filepath.Join(cfg.RunDir, "host.sock"), a.Snapshot)
	if err != nil {
		return nil, err
	}
	if cfg.Metrics.Listen != "" && opts.Registry != nil {
		ln, err := net.Listen("tcp", cfg.Metrics.Listen)
		if err != nil {
			return nil, fmt.Errorf("metrics.listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{}))
		a.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = a.metrics.Serve(ln) }()
	}
	if err := a.startUpdates(); err != nil {
		return nil, err
	}
	if cfg.Control != nil {
		a.waiting = true
		cc := cfg.ControlConfig(opts.Version)
		a.ctl, err = control.Start(a.ctx, cc, a, opts.Log.With("component", "control"))
		if err != nil {
			return nil, err
		}
		a.connectUpdates()
		// Neither etcd nor a persisted state after the grace period: run
		// what the config file says, and converge when etcd answers.
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			select {
			case <-a.ctx.Done():
			case <-time.After(cc.OfflineGrace + 2*time.Second):
				a.release()
			}
		}()
	}
	if err := a.setSpecs(); err != nil {
		return nil, err
	}
	a.startVulnReport()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.heartbeat()
	}()
	a.startHostGate()
	close(a.ready)
	// Drop the file pages start-up touched once the plugins are up, then
	// now and again (see package memtrim).
	memtrim.Schedule(a.ctx.Done(), 15*time.Second, 5*time.Minute)
	a.log.Info("host started", "host", cfg.HostName, "version", opts.Version, "plugins", len(cfg.Plugins), "sinks", strings.Join(a.sinks, ","))
	return a, nil
}

// Ready is closed once the agent has started.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Err reports a fatal error of the agent, if one happens.
func (a *Agent) Err() <-chan error { return a.errc }

// Close stops the plugins (gracefully, then by force), flushes the
// pipeline to the sinks and removes the status socket. It is idempotent.
func (a *Agent) Close() error {
	var errs []error
	a.once.Do(func() {
		a.closeUpdates()
		if a.ctl != nil {
			a.ctl.Close()
		}
		a.cancel()
		if a.sup != nil {
			a.sup.Close()
		}
		a.wg.Wait()
		if a.gov != nil {
			errs = append(errs, a.gov.close())
		}
		if a.metrics != nil {
			_ = a.metrics.Close()
		}
		if a.sock != nil {
			errs = append(errs, a.sock.Close())
		}
		if a.pipe != nil {
			errs = append(errs, a.pipe.Close())
		}
		if a.spawner != nil {
			a.spawner.Close()
		}
		if a.lock != nil {
			a.lock.Close() // releases the flock
		}
		a.mu.Lock()
		for _, u := range a.usage {
			if u.proc != nil {
				u.proc.Close()
			}
		}
		a.mu.Unlock()
	})
	return errors.Join(errs...)
}

// gate holds every plugin while the emergency stop is in force, and at
// boot until the desired state is known.
func (a *Agent) gate(name string) (string, time.Duration) {
	a.mu.Lock()
	stop, waiting := a.desired.Stop != nil && *a.desired.Stop, a.waiting
	a.mu.Unlock()
	switch {
	case stop:
		return "emergency stop", 0
	case waiting:
		return "waiting for the fleet's desired state", 0
	}
	return a.gov.allow(name)
}

// release lets the plugins start on whatever state is known now.
func (a *Agent) release() {
	a.mu.Lock()
	was := a.waiting
	a.waiting = false
	a.mu.Unlock()
	if was {
		a.sup.Poke()
	}
}

// specs lays the desired state over the config file's plugins.
func (a *Agent) specs() []supervisor.Spec {
	a.mu.Lock()
	ds := a.desired
	a.mu.Unlock()
	out := make([]supervisor.Spec, 0, len(a.cfg.Plugins))
	for _, p := range a.cfg.Plugins {
		enabled := p.IsEnabled()
		base := api.DesiredState{Plugins: map[string]api.PluginState{p.Name: {
			Enabled: &enabled, Config: p.PluginConfigJSON(), LogLevel: p.LogLevel,
		}}}
		eff := api.Merge(base, ds).Plugins[p.Name]
		a.gov.apply(p.Name, eff.Limits)
		spec := supervisor.Spec{
			Name: p.Name, Path: p.Path, SHA256: p.SHA256,
			Enabled:  eff.Enabled == nil || *eff.Enabled,
			Config:   eff.Config,
			LogLevel: eff.LogLevel,
		}
		a.installedBinary(&spec)
		out = append(out, spec)
	}
	return out
}

// Apply makes the host match a desired state from the fleet (the control
// plane's Applier). Plugins the host has no binary for are refused by name;
// everything else is applied. It is idempotent.
func (a *Agent) Apply(_ context.Context, rev int64, ds api.DesiredState) error {
	var errs []error
	known := map[string]bool{}
	for _, p := range a.cfg.Plugins {
		known[p.Name] = true
	}
	names := make([]string, 0, len(ds.Plugins))
	for name := range ds.Plugins {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !known[name] {
			errs = append(errs, fmt.Errorf("plugin %q: this host has no binary for it", name))
			continue
		}
		if _, err := a.gov.resolve(name, ds.Plugins[name].Limits); err != nil {
			errs = append(errs, err)
		}
	}
	if a.opts.SetLogLevel != nil {
		level := ds.LogLevel
		if level == "" {
			level = a.cfg.Log.Level
		}
		if err := a.opts.SetLogLevel(level); err != nil {
			errs = append(errs, fmt.Errorf("log_level: %w", err))
		}
	}
	a.mu.Lock()
	a.desired, a.rev, a.waiting = ds, rev, false
	a.mu.Unlock()
	if err := a.wantHostVersion(ds); err != nil {
		errs = append(errs, err)
	}
	if err := a.setSpecs(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, a.wantVersions(ds)...)
	a.sup.Poke()
	return errors.Join(errs...)
}

// Status reports each plugin for the registration value.
func (a *Agent) Status() map[string]api.PluginStatus {
	out := map[string]api.PluginStatus{}
	for _, s := range a.sup.Status() {
		last := s.LastError
		if s.ConfigError != "" {
			last = "config rejected: " + s.ConfigError
		}
		out[s.Name] = api.PluginStatus{Version: s.Version, State: string(s.State), LastError: last, Restarts: s.Restarts,
			Breaker: a.gov.summary(s.Name), Update: a.updateStatus(s.Name)}
	}
	return out
}

// RunTask runs a one-shot task from the fleet on its plugin (the control
// loop's TaskRunner).
func (a *Agent) RunTask(ctx context.Context, t api.Task) error {
	p := a.sup.Plugin(t.Plugin)
	if p == nil {
		return fmt.Errorf("task %s: this host has no plugin %q", t.ID, t.Plugin)
	}
	res, err := p.Task(ctx, t.ID, t.Name, t.Args)
	if err != nil {
		return err
	}
	_ = a.hb.Emit(&sdk.Event{Type: "task_result", Severity: sdk.SevInfo, Fields: []sdk.Field{
		sdk.String("task_id", t.ID), sdk.String("plugin", t.Plugin), sdk.String("task", t.Name), sdk.String("result", string(res)),
	}})
	return nil
}

// Supervisor returns the plugin supervisor (for tasks).
func (a *Agent) Supervisor() *supervisor.Manager { return a.sup }

// Snapshot returns the host's state for `vigil-host status`.
func (a *Agent) Snapshot() status.Snapshot {
	stats := map[string]pipeline.PluginStats{}
	for _, s := range a.pipe.Stats() {
		stats[s.Plugin] = s
	}
	a.mu.Lock()
	stopped := a.desired.Stop != nil && *a.desired.Stop
	self := a.self
	use := make(map[string]usage, len(a.usage))
	for k, v := range a.usage {
		use[k] = v
	}
	a.mu.Unlock()
	snap := status.Snapshot{
		Host: a.cfg.HostName, Version: a.opts.Version, PID: os.Getpid(), StartedAt: a.started,
		Labels: a.cfg.Labels, CPUPercent: self.pct, RSSBytes: self.rss, Stopped: stopped, Sinks: a.sinks,
		HostUpdate: a.HostUpdate(), Keyring: a.Keyring(),
	}
	for _, c := range a.counted {
		if snap.SinkCounts == nil {
			snap.SinkCounts = map[string]sink.Counts{}
		}
		snap.SinkCounts[c.Name()] = c.Counts()
	}
	if a.ctl != nil {
		cs := a.ctl.Status()
		snap.Control = map[string]any{
			"endpoints": a.cfg.Control.Endpoints, "connected": cs.Connected, "applied_revision": cs.Applied.Revision,
			"applied_error": cs.Applied.Error, "from_disk": cs.FromDisk, "last_error": cs.LastError, "resyncs": cs.Resyncs,
		}
	}
	for _, s := range a.sup.Status() {
		st := stats[s.Name]
		u := use[s.Name]
		state := string(s.State)
		if s.Held != "" {
			state += " (" + s.Held + ")"
		}
		snap.Plugins = append(snap.Plugins, status.Plugin{
			Name: s.Name, Version: s.Version, State: state, PID: s.PID, Restarts: s.Restarts,
			LastError: s.LastError, ConfigError: s.ConfigError,
			CPUPercent: u.pct, RSSBytes: u.rss,
			Emitted: st.Emitted, Delivered: st.Delivered, Queued: st.Queued,
			Dropped: st.Dropped, Counters: st.Counters, Breaker: a.gov.summary(s.Name),
			Update: a.updateStatus(s.Name),
		})
	}
	return snap
}

// heartbeat samples resource use and reports the host's health as events
// at a jittered interval (a hash of the host name spreads a fleet's
// heartbeats over the interval).
func (a *Agent) heartbeat() {
	interval := a.cfg.Heartbeat.Interval
	h := fnv.New64a()
	h.Write([]byte(a.cfg.HostName))
	first := time.Duration(h.Sum64() % uint64(interval))
	sample := time.NewTicker(5 * time.Second)
	defer sample.Stop()
	// Rate-limited events reach the flood breakers at least twice per
	// governor sample, so a steady flood shows in every sample.
	drops := time.NewTicker(min(time.Second, a.cfg.Governance.Interval/2))
	defer drops.Stop()
	beat := time.NewTimer(min(first, 10*time.Second))
	defer beat.Stop()
	a.sample()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-drops.C:
			rl := map[string]uint64{}
			for _, st := range a.pipe.Stats() {
				rl[st.Plugin] = st.Dropped["rate_limited"]
			}
			a.gov.reportDrops(rl)
		case <-sample.C:
			a.sample()
		case <-beat.C:
			a.sample()
			a.emitHeartbeat()
			beat.Reset(interval)
		}
	}
}

// sample reads CPU and RSS of the host and each plugin process.
func (a *Agent) sample() {
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.self = measure(a.self, os.Getpid(), now)
	live := map[string]bool{}
	for _, s := range a.sup.Status() {
		live[s.Name] = true
		u := a.usage[s.Name]
		if s.PID == 0 {
			if u.proc != nil {
				u.proc.Close()
			}
			a.usage[s.Name] = usage{}
			continue
		}
		a.usage[s.Name] = measure(u, s.PID, now)
	}
	for name, u := range a.usage {
		if !live[name] {
			if u.proc != nil {
				u.proc.Close()
			}
			delete(a.usage, name)
		}
	}
}

func measure(u usage, pid int, now time.Time) usage {
	if u.pid != pid || u.proc == nil {
		if u.proc != nil {
			u.proc.Close()
		}
		p, err := procstat.Open("", pid)
		if err != nil {
			return usage{}
		}
		u = usage{pid: pid, proc: p}
	}
	s, err := u.proc.Sample()
	if err != nil {
		u.proc.Close()
		return usage{}
	}
	if !u.at.IsZero() {
		if dt := now.Sub(u.at); dt > 0 {
			u.pct = 100 * float64(s.CPU-u.cpu) / float64(dt)
		}
	}
	u.cpu, u.at, u.rss = s.CPU, now, s.RSS
	return u
}

// lockRunDir takes an exclusive flock on run_dir/host.lock, so that a second
// vigil-host on the same run dir refuses to start instead of disturbing the
// first.
func lockRunDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("run_dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "host.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("run_dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("run_dir %s: another vigil-host is running (%s is locked)", dir, f.Name())
	}
	return f, nil
}
