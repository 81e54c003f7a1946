package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/sdk"
)

// agentEvent is one change of a registration as the "server" sees it.
type agentEvent struct {
	host    string
	deleted bool
	reg     api.Registration
	at      time.Time
	size    int // bytes of the value
}

// probeKey is a key nobody writes, read for the revision in its header.
const probeKey = "/vigil-sim-rev-probe"

// watchAgents watches registrations under prefix (a single key if exact)
// from rev and sends decoded events until ctx ends.
func (s *Sim) watchAgents(ctx context.Context, key string, prefix bool, rev int64) <-chan agentEvent {
	return s.watchAgentsOpt(ctx, s.admin, key, prefix, rev, true)
}

// watchAgentsOpt is watchAgents; requireLeader false keeps the watch open
// (resumed on another member by the client) while the cell elects a leader.
func (s *Sim) watchAgentsOpt(ctx context.Context, cli *clientv3.Client, key string, prefix bool, rev int64, requireLeader bool) <-chan agentEvent {
	out := make(chan agentEvent, 4096)
	opts := []clientv3.OpOption{clientv3.WithRev(rev), clientv3.WithCreatedNotify()}
	if prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	wctx := ctx
	if requireLeader {
		wctx = clientv3.WithRequireLeader(ctx)
	}
	var wchs []clientv3.WatchChan
	if prefix && s.opts.ObserverWatches > 1 {
		wchs = s.splitWatch(ctx, wctx, key, rev)
	} else {
		wchs = []clientv3.WatchChan{cli.Watch(wctx, key, opts...)}
	}
	// Wait until the server has created the watch, so that no measured
	// event is delivered late as part of a catch-up.
	for _, wch := range wchs {
		select {
		case <-wch:
		case <-ctx.Done():
		}
	}
	var wg sync.WaitGroup
	for _, wch := range wchs {
		wg.Add(1)
		go s.forwardAgents(ctx, wch, out, wg.Done)
	}
	go func() {
		wg.Wait()
		close(out)
	}()
	return out
}

// splitWatch watches the agent prefix as -observer-watches sub-ranges (by
// host name), each on a client connection of its own to one member, so that
// one slow stream holds back a share of the acknowledgements, not all.
// The connections close with ctx.
func (s *Sim) splitWatch(ctx, wctx context.Context, prefix string, rev int64) []clientv3.WatchChan {
	k := s.opts.ObserverWatches
	names := make([]string, 0, len(s.hosts))
	for _, h := range s.hosts {
		names = append(names, h.name)
	}
	sort.Strings(names)
	var out []clientv3.WatchChan
	lo := prefix
	for i := 0; i < k; i++ {
		hi := clientv3.GetPrefixRangeEnd(prefix)
		if i < k-1 && len(names) > 0 {
			hi = prefix + names[(i+1)*len(names)/k]
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.eps[i%len(s.eps)]}, DialTimeout: 10 * time.Second,
			Logger: zap.NewNop(), MaxCallRecvMsgSize: 64 << 20})
		if err != nil {
			cli = s.admin
		} else {
			go func() { <-ctx.Done(); _ = cli.Close() }()
		}
		out = append(out, cli.Watch(wctx, lo, clientv3.WithRange(hi), clientv3.WithRev(rev), clientv3.WithCreatedNotify()))
		lo = hi
	}
	return out
}

// forwardAgents decodes one watch's events into out until it closes.
func (s *Sim) forwardAgents(ctx context.Context, wch clientv3.WatchChan, out chan<- agentEvent, done func()) {
	defer done()
	{
		for resp := range wch {
			now := time.Now()
			for _, ev := range resp.Events {
				e := agentEvent{host: strings.TrimPrefix(string(ev.Kv.Key), s.ks.Agents()), at: now, size: len(ev.Kv.Value)}
				if ev.Type == clientv3.EventTypeDelete {
					e.deleted = true
				} else if json.Unmarshal(ev.Kv.Value, &e.reg) != nil {
					continue
				}
				select {
				case out <- e:
				case <-ctx.Done():
					return
				}
			}
		}
	}
}

func (s *Sim) currentRev(ctx context.Context) (int64, error) {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := s.admin.Get(rctx, probeKey)
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// waitHosts consumes events until every host in want satisfies ok or the
// timeout passes; it returns each done host's latency from t0.
func waitHosts(ctx context.Context, evs <-chan agentEvent, want map[string]bool, t0 time.Time, timeout time.Duration, ok func(agentEvent) bool) []time.Duration {
	return waitHostsTL(ctx, evs, want, t0, timeout, ok, nil)
}

// waitHostsTL is waitHosts recording each done host in tl (if not nil).
func waitHostsTL(ctx context.Context, evs <-chan agentEvent, want map[string]bool, t0 time.Time, timeout time.Duration, ok func(agentEvent) bool, tl *ackTimeline) []time.Duration {
	lat := make([]time.Duration, 0, len(want))
	done := map[string]bool{}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for len(done) < len(want) {
		select {
		case e, open := <-evs:
			if !open {
				return lat
			}
			if want[e.host] && !done[e.host] && ok(e) {
				done[e.host] = true
				lat = append(lat, e.at.Sub(t0))
				tl.record(e)
			}
		case <-deadline.C:
			return lat
		case <-ctx.Done():
			return lat
		}
	}
	return lat
}

func (s *Sim) allHosts() map[string]bool {
	m := make(map[string]bool, len(s.hosts))
	for _, h := range s.hosts {
		if h.killed.IsZero() {
			m[h.name] = true
		}
	}
	if s.part != nil {
		for _, n := range s.part.names {
			m[n] = true
		}
	}
	return m
}

func result(name string, hosts, count int, lat []time.Duration, total time.Duration, target string, met bool, note string) Result {
	p50, p99, mx := percentiles(lat)
	return Result{Scenario: name, Hosts: hosts, Count: count, Done: len(lat), TotalMS: ms(total),
		P50MS: p50, P99MS: p99, MaxMS: mx, Target: target, Met: met, Note: note}
}

// register starts every host at once and waits until each has registered
// and acknowledged its first desired state.
func (s *Sim) register(ctx context.Context) (Result, error) {
	rev, err := s.currentRev(ctx)
	if err != nil {
		return Result{}, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs := s.watchAgents(wctx, s.ks.Agents(), true, rev+1)
	t0 := time.Now()
	if s.net != nil && s.opts.Partition > 0 {
		if err := s.startPartChild(); err != nil {
			return Result{}, err
		}
	}
	if err := s.startHosts(ctx); err != nil {
		return Result{}, err
	}
	started := time.Since(t0)
	want := s.allHosts()
	lat := waitHosts(ctx, evs, want, t0, max(120*time.Second, 2*s.opts.Spread+60*time.Second), func(e agentEvent) bool {
		return !e.deleted && e.reg.Applied.Revision > 0
	})
	total := time.Since(t0)
	return result("register", len(want), len(want), lat, total, "all registered and acknowledged", len(lat) == len(want),
		fmt.Sprintf("registration storm: %d control loops started in %s, each grants a lease, creates its key in a Txn, reads its state and acknowledges", len(want), started.Round(time.Millisecond))), nil
}

// fleetStop writes the fleet key's stop flag and waits until every host's
// registration shows the new revision applied.
func (s *Sim) fleetStop(ctx context.Context, stop bool) (Result, error) {
	name := "resume"
	if stop {
		name = "stop"
	}
	rev, err := s.currentRev(ctx)
	if err != nil {
		return Result{}, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var evs <-chan agentEvent
	var obs *observerProc
	if s.opts.ObserverProcess && s.opts.ObserverWatches <= 1 {
		if obs, evs, err = s.startObserver(wctx, s.eps, rev+1, true); err != nil {
			return Result{}, err
		}
	} else {
		evs = s.watchAgents(wctx, s.ks.Agents(), true, rev+1)
	}
	fleet := s.ks.ScopeKey(api.Scope{Kind: api.ScopeFleet})
	before := s.mark()
	t0 := time.Now()
	var wroteAt atomic.Int64
	tl := s.startTimeline(wctx, t0, wroteAt.Load, obs == nil)
	prof := s.startProfiles(name)
	wrote, err := s.put(ctx, fleet, docValue("fleet", api.DesiredState{Stop: &stop}, "vigil-sim emergency "+name))
	if err != nil {
		if obs != nil {
			obs.finish(t0, tl)
		}
		tl.stop()
		return Result{}, fmt.Errorf("writing fleet stop=%v: %w", stop, err)
	}
	wroteAt.Store(wrote)
	s.stopped, s.lastFleetRev = stop, wrote
	want := s.allHosts()
	var poll *progressPoll
	if s.server != nil {
		poll = s.server.pollProgress(wctx, wrote, len(want), t0)
	}
	lat := waitHostsTL(ctx, evs, want, t0, 60*time.Second, func(e agentEvent) bool {
		return !e.deleted && e.reg.Applied.Revision >= wrote && e.reg.Stopped == stop
	}, tl)
	total := time.Since(t0)
	cpuNote := s.mark().since(before)
	if obs != nil && len(lat) > 0 {
		// The observer's delivery time of the last acknowledgement, not
		// the time this loaded process got to read it.
		total = slices.Max(lat)
	}
	obsNote := ""
	if obs != nil {
		obsNote = obs.finish(t0, tl)
	}
	if poll != nil {
		obsNote += poll.finish(10 * time.Second)
	}
	timeline := tl.stop() + obsNote + cpuNote + prof.wait()
	if len(lat) < len(want) {
		total = 0
	}
	met := len(lat) == len(want) && total <= 5*time.Second
	return result(name, len(want), len(want), lat, total, "all acknowledged within 5s", met,
		fmt.Sprintf("one write of the fleet key (stop=%v) at revision %d; latency = write start to the registration showing that revision; %s", stop, wrote, timeline)), nil
}

// leaderLoss writes the fleet key's stop flag (the opposite of its current
// value), kills the cell's leader with SIGKILL right after the write
// returned, and waits until every host acknowledged; the killed member is
// restarted afterwards so that later scenarios have the whole cell.
func (s *Sim) leaderLoss(ctx context.Context) (Result, error) {
	stop := !s.stopped
	lctx, lcancel := context.WithTimeout(ctx, 60*time.Second)
	leader, err := s.cell.waitLeader(lctx, -1)
	lcancel()
	if err != nil {
		return Result{}, err
	}
	rev, err := s.currentRev(ctx)
	if err != nil {
		return Result{}, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The observer watches through the members that survive: a watch on
	// the killed one would be resumed elsewhere from history, in batches
	// (up to ~12 s late at 20,000 hosts), which measures the observer's
	// recovery, not when the hosts' acknowledgements were in the cell.
	var survivors []string
	for i, ep := range s.eps {
		if i != leader {
			survivors = append(survivors, ep)
		}
	}
	// With -observer-process the observer process gets only those members
	// (as fleetStop, apart from the host loops).
	var evs <-chan agentEvent
	var obsProc *observerProc
	if s.opts.ObserverProcess && s.opts.ObserverWatches <= 1 {
		if obsProc, evs, err = s.startObserver(wctx, survivors, rev+1, false); err != nil {
			return Result{}, err
		}
	} else {
		obs, err := clientv3.New(clientv3.Config{Endpoints: survivors, DialTimeout: 10 * time.Second, Logger: zap.NewNop(), MaxCallRecvMsgSize: 64 << 20})
		if err != nil {
			return Result{}, fmt.Errorf("observer client: %w", err)
		}
		defer obs.Close()
		evs = s.watchAgentsOpt(wctx, obs, s.ks.Agents(), true, rev+1, false)
	}
	fleet := s.ks.ScopeKey(api.Scope{Kind: api.ScopeFleet})
	t0 := time.Now()
	var wroteAt atomic.Int64
	tl := s.startTimeline(wctx, t0, wroteAt.Load, obsProc == nil)
	prof := s.startProfiles("leader-loss")
	wrote, err := s.put(ctx, fleet, docValue("fleet", api.DesiredState{Stop: &stop}, "vigil-sim leader loss"))
	if err != nil {
		if obsProc != nil {
			obsProc.finish(t0, tl)
		}
		tl.stop()
		return Result{}, fmt.Errorf("writing fleet stop=%v: %w", stop, err)
	}
	wroteAt.Store(wrote)
	s.stopped, s.lastFleetRev = stop, wrote
	s.cell.kill(leader)
	killed := time.Since(t0)
	var elected atomic.Int64
	go func() {
		lctx, lcancel := context.WithTimeout(wctx, 60*time.Second)
		defer lcancel()
		if _, err := s.cell.waitLeader(lctx, leader); err == nil {
			elected.Store(int64(time.Since(t0)))
		}
	}()
	want := s.allHosts()
	lat := waitHostsTL(ctx, evs, want, t0, 120*time.Second, func(e agentEvent) bool {
		return !e.deleted && e.reg.Applied.Revision >= wrote && e.reg.Stopped == stop
	}, tl)
	total := time.Since(t0)
	obsNote := ""
	if obsProc != nil {
		if len(lat) > 0 {
			total = slices.Max(lat) // the observer's delivery time, as in fleetStop
		}
		obsNote = obsProc.finish(t0, tl)
	}
	timeline := tl.stop() + obsNote + prof.wait()
	if len(lat) < len(want) {
		total = 0
	}
	el := time.Duration(elected.Load())
	rctx, rcancel := context.WithTimeout(ctx, 60*time.Second)
	defer rcancel()
	rerr := s.cell.restart(rctx, leader)
	met := len(lat) == len(want) && total > 0 && total <= 15*time.Second
	note := fmt.Sprintf("fleet key stop=%v written at revision %d, then leader %s killed (SIGKILL) %s after the write began; new leader seen after %s; latency = write start to the registration showing that revision",
		stop, wrote, s.cell.members[leader].name, killed.Round(time.Millisecond), el.Round(time.Millisecond))
	if rerr != nil {
		note += fmt.Sprintf("; restarting the killed member failed: %v", rerr)
	}
	note += "; " + timeline
	return result("leader-loss", len(want), len(want), lat, total, "all acknowledged within 15s", met, note), nil
}

// idle lets the registered fleet sit for -idle and measures what it costs
// at rest: lease renewals (3 per TTL per host) and nothing else, on the
// members and in the simulator.
func (s *Sim) idle(ctx context.Context) Result {
	d := s.opts.Idle
	cpu := func() (cell float64, per []MemberStat) {
		if s.cell == nil {
			return 0, nil
		}
		per = s.cell.stats()
		for _, m := range per {
			cell += m.CPUSeconds
		}
		return cell, per
	}
	c0, _ := cpu()
	_, sim0 := procStats(os.Getpid())
	t0 := time.Now()
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
	el := time.Since(t0)
	c1, per := cpu()
	_, sim1 := procStats(os.Getpid())
	n := len(s.allHosts())
	renewals := float64(n) * el.Seconds() / (s.opts.LeaseTTL.Seconds() / 3)
	note := fmt.Sprintf("%d hosts idle for %s: %.0f lease renewals expected (3 per TTL per host, %.0f/s); simulator CPU %.1f s (%.0f%% of a core)",
		n, el.Round(time.Millisecond), renewals, renewals/el.Seconds(), sim1-sim0, 100*(sim1-sim0)/el.Seconds())
	if s.cell != nil {
		note += fmt.Sprintf("; etcd cell CPU %.1f s (%.0f%% of a core, %.0f µs per renewal, all members); members:", c1-c0, 100*(c1-c0)/el.Seconds(), 1e6*(c1-c0)/max(renewals, 1))
		for _, m := range per {
			note += fmt.Sprintf(" %s RSS %.0f MiB", m.Name, m.RSSMB)
		}
	}
	return Result{Scenario: "idle", Hosts: n, Count: n, Done: n, TotalMS: ms(el), Target: "(informational)", Met: true, Note: note}
}

// push changes one host's config at a time and measures until the host's
// applier has it and until its registration acknowledges it.
func (s *Sim) push(ctx context.Context) ([]Result, error) {
	rng := rand.New(rand.NewPCG(s.opts.Seed, 42))
	var applyLat, ackLat []time.Duration
	for i := 0; i < s.opts.Pushes; i++ {
		h := s.hosts[rng.IntN(len(s.hosts))]
		if !h.killed.IsZero() {
			continue
		}
		rev, err := s.currentRev(ctx)
		if err != nil {
			return nil, err
		}
		wctx, cancel := context.WithCancel(ctx)
		evs := s.watchAgents(wctx, s.ks.Agent(h.name), false, rev+1)
		key := s.ks.ScopeKey(api.Scope{Kind: api.ScopeHost, Host: h.name})
		cfg := json.RawMessage(`{"sim_seq":` + strconv.Itoa(i) + `}`)
		ds := api.DesiredState{Plugins: map[string]api.PluginState{"procmon": {Config: cfg}}}
		t0 := time.Now()
		wrote, err := s.put(ctx, key, docValue("host:"+h.name, ds, "vigil-sim push"))
		if err != nil {
			cancel()
			return nil, err
		}
		timeout := time.NewTimer(10 * time.Second)
	applied:
		for {
			select {
			case r := <-h.applier.notify:
				if r >= wrote {
					applyLat = append(applyLat, time.Since(t0))
					break applied
				}
			case <-timeout.C:
				break applied
			}
		}
		timeout.Stop()
		lat := waitHosts(ctx, evs, map[string]bool{h.name: true}, t0, 10*time.Second, func(e agentEvent) bool {
			return !e.deleted && e.reg.Applied.Revision >= wrote
		})
		ackLat = append(ackLat, lat...)
		cancel()
	}
	_, p99, _ := percentiles(applyLat)
	hosts := len(s.allHosts())
	return []Result{
		result("push-apply", hosts, s.opts.Pushes, applyLat, 0, "p99 within 200ms", len(applyLat) == s.opts.Pushes && p99 <= 200,
			"one host's key written; latency = write start to that host's Apply with the new revision"),
		result("push-ack", hosts, s.opts.Pushes, ackLat, 0, "(informational)", len(ackLat) == s.opts.Pushes,
			"latency = write start to the host's registration showing the new revision"),
	}, nil
}

// offline stops the keepalive of some hosts without revoking (a crash) and
// measures until their registrations disappear.
func (s *Sim) offline(ctx context.Context) (Result, error) {
	n := s.opts.Offline
	victims := s.hosts[len(s.hosts)-n:]
	rev, err := s.currentRev(ctx)
	if err != nil {
		return Result{}, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs := s.watchAgents(wctx, s.ks.Agents(), true, rev+1)
	killedAt := make(map[string]time.Time, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, h := range victims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			at := time.Now()
			h.loop.Abandon()
			mu.Lock()
			killedAt[h.name] = at
			h.killed = at
			mu.Unlock()
		}()
	}
	wg.Wait()
	want := map[string]bool{}
	for _, h := range victims {
		want[h.name] = true
	}
	ttl := s.opts.LeaseTTL
	limit := ttl + ttl/3
	var lat []time.Duration
	done := map[string]bool{}
	deadline := time.NewTimer(3*ttl + time.Duration(n/500+1)*time.Second)
	defer deadline.Stop()
wait:
	for len(done) < n {
		select {
		case e, open := <-evs:
			if !open {
				break wait
			}
			if e.deleted && want[e.host] && !done[e.host] {
				done[e.host] = true
				lat = append(lat, e.at.Sub(killedAt[e.host]))
			}
		case <-deadline.C:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	_, _, mx := percentiles(lat)
	met := len(lat) == n && mx <= ms(limit)
	return result("offline", len(s.hosts), n, lat, 0, fmt.Sprintf("each within TTL+TTL/3 = %s", limit), met,
		fmt.Sprintf("%d hosts stop renewing their %s leases without revoking; latency = stop to the key's deletion", n, ttl)), nil
}

// Run runs the scenarios in order. The register scenario always runs
// first (the others need hosts).
func (s *Sim) Run(ctx context.Context) (Report, error) {
	var changes, leaderless atomic.Int64
	if s.cell != nil {
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go s.cell.watchLeader(lctx, &changes, &leaderless)
	}
	rep, err := s.run(ctx)
	if err != nil {
		s.countLoops()
		rep.AckResends, rep.Resyncs = s.report.AckResends, s.report.Resyncs
	}
	rep.LeaderChanges, rep.LeaderlessPolls = changes.Load(), leaderless.Load()
	if s.cell != nil {
		rep.TermEnd = s.cell.maxTerm.Load()
	}
	rep.LoadEnd = loadAvg()
	if s.cell != nil {
		rep.EtcdAtEnd = s.cell.stats()
	}
	if s.proxies != nil {
		rep.EtcdAtEnd = append(rep.EtcdAtEnd, s.proxies.stats()...)
	}
	if s.server != nil {
		rep.ServerAtEnd = s.server.stat()
	}
	return rep, err
}

func (s *Sim) run(ctx context.Context) (Report, error) {
	if s.server != nil {
		s.report.ServerBeforeRegister = s.server.stat()
	}
	s.load1AtStart = load1()
	r, err := s.register(ctx)
	if err != nil {
		return s.report, err
	}
	r.Load1 = s.load1AtStart
	s.report.Results = append(s.report.Results, r)
	if r.Done < r.Count {
		// The other scenarios measure a settled fleet; on a cell that did
		// not register it they would only time out.
		return s.report, fmt.Errorf("registration incomplete (%d of %d hosts after %.0f s): later scenarios skipped", r.Done, r.Count, r.TotalMS/1000)
	}
	s.report.SimAfterRegisterRSSMB, s.report.SimAfterRegisterCPU = procStats(os.Getpid())
	if s.server != nil {
		s.report.ServerAfterRegister = s.server.stat()
	}
	if s.cell != nil {
		s.report.EtcdAfterRegister = s.cell.stats()
		s.report.TermAfterRegister = s.cell.maxTerm.Load()
	}
	if s.proxies != nil {
		s.report.EtcdAfterRegister = append(s.report.EtcdAfterRegister, s.proxies.stats()...)
	}
	for _, sc := range s.opts.Scenarios {
		if sc == "register" {
			continue
		}
		rest := s.settle(ctx)
		var res []Result
		load := load1()
		switch sc {
		case "stop", "resume":
			r, err := s.fleetStop(ctx, sc == "stop")
			if err != nil {
				return s.report, err
			}
			res = []Result{r}
		case "push":
			res, err = s.push(ctx)
			if err != nil {
				return s.report, err
			}
		case "offline":
			r, err := s.offline(ctx)
			if err != nil {
				return s.report, err
			}
			res = []Result{r}
		case "idle":
			res = []Result{s.idle(ctx)}
		case "ackcost":
			res, err = s.ackCost(ctx)
			if err != nil {
				return s.report, err
			}
			s.report.Results = append(s.report.Results, res...)
			continue // each round carries its own load
		case "partition":
			res, err = s.partition(ctx)
			if err != nil {
				return s.report, err
			}
		case "leader-loss":
			r, err := s.leaderLoss(ctx)
			if err != nil {
				return s.report, err
			}
			res = []Result{r}
		}
		for i := range res {
			res[i].Load1 = load
			res[i].Note = rest + res[i].Note
		}
		s.report.Results = append(s.report.Results, res...)
	}
	s.countLoops()
	s.report.Goroutines = runtime.NumGoroutine()
	s.report.MaxRSSMB = maxRSSMB()
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.report.CPUSeconds = float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
	}
	return s.report, nil
}

// settle pauses for opts.Settle before a scenario and describes how busy
// the machine was at rest, over the pause's last half (the cell's lease
// renewals, mostly).
func (s *Sim) settle(ctx context.Context) string {
	if s.opts.Settle <= 0 {
		return ""
	}
	half := s.opts.Settle / 2
	clock := sdk.SystemClock()
	if clock.Sleep(ctx, s.opts.Settle-half) != nil {
		return ""
	}
	a := s.mark()
	if clock.Sleep(ctx, half) != nil {
		return ""
	}
	b := s.mark()
	if !a.ok || !b.ok {
		return fmt.Sprintf("after a %s pause; ", s.opts.Settle)
	}
	secs := b.at.Sub(a.at).Seconds()
	return fmt.Sprintf("after a %s pause (over its last %.1f s the machine was busy %.2f cores: members %.2f, simulator %.2f); ",
		s.opts.Settle, secs, (b.busy-a.busy)/secs, (b.members-a.members)/secs, (b.sim-a.sim)/secs)
}

// countLoops sums the hosts' resends, resyncs and failed acknowledgements
// into the report, with the most frequent last acknowledgement errors.
func (s *Sim) countLoops() {
	s.report.AckResends, s.report.Resyncs, s.report.AckFailures = 0, 0, 0
	errs := map[string]int{}
	for _, h := range s.hosts {
		st := h.loop.Status()
		s.report.AckResends += st.AckResends
		s.report.Resyncs += st.Resyncs
		s.report.AckFailures += st.AckFailures
		if st.LastAckError != "" {
			errs[st.LastAckError]++
		}
	}
	s.report.AckErrors = topCounts(errs, 3)
}

// topCounts formats the n most frequent keys of m as "count × key".
func topCounts(m map[string]int, n int) []string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int { return cmp.Or(m[b]-m[a], strings.Compare(a, b)) })
	var out []string
	for _, k := range keys[:min(n, len(keys))] {
		out = append(out, fmt.Sprintf("%d × %s", m[k], k))
	}
	return out
}

// loadAvg is the first three fields of /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

func load1() float64 {
	f := strings.Fields(loadAvg())
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func maxRSSMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
