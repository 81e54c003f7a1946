package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/control"
)

// The partition scenario puts -partition hosts in a network namespace of
// their own (a second vigil-sim process started with ip netns exec),
// connected to the cell by a veth pair; cutting the link (ip link set
// down, the host side) is the partition, setting it up again the heal.
// The partitioned hosts keep a state directory each (as a real host does),
// so that they keep running, and restart, from their persisted state while
// etcd is out of reach.

// netPart is the namespace and the veth pair the simulator created.
type netPart struct {
	ns, vethHost, vethNS string
	hostIP, nsIP         string
}

func runIP(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// setupNetns creates the namespace and a /30 on the veth pair in
// 10.213.0.0/16 (an address of this machine only: nothing is routed).
func setupNetns() (*netPart, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("-partition needs root (it creates a network namespace and a veth pair)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, errors.New("-partition needs the ip command (iproute2)")
	}
	pid := os.Getpid()
	sub := pid % 16000
	n := &netPart{
		ns:       fmt.Sprintf("vsim%d", pid),
		vethHost: fmt.Sprintf("vsh%d", pid),
		vethNS:   fmt.Sprintf("vsn%d", pid),
		hostIP:   fmt.Sprintf("10.213.%d.%d", sub/64, (sub%64)*4+1),
		nsIP:     fmt.Sprintf("10.213.%d.%d", sub/64, (sub%64)*4+2),
	}
	steps := [][]string{
		{"netns", "add", n.ns},
		{"link", "add", n.vethHost, "type", "veth", "peer", "name", n.vethNS},
		{"link", "set", n.vethNS, "netns", n.ns},
		{"addr", "add", n.hostIP + "/30", "dev", n.vethHost},
		{"link", "set", n.vethHost, "up"},
		{"-n", n.ns, "addr", "add", n.nsIP + "/30", "dev", n.vethNS},
		{"-n", n.ns, "link", "set", n.vethNS, "up"},
		{"-n", n.ns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := runIP(s...); err != nil {
			n.close()
			return nil, err
		}
	}
	return n, nil
}

func (n *netPart) cut() error  { return runIP("link", "set", n.vethHost, "down") }
func (n *netPart) heal() error { return runIP("link", "set", n.vethHost, "up") }

func (n *netPart) close() {
	_ = runIP("link", "del", n.vethHost) // removes its peer too
	_ = runIP("netns", "del", n.ns)
}

// partChild is the vigil-sim process running the partitioned hosts.
type partChild struct {
	cmd        *exec.Cmd
	done       chan struct{}
	statusFile string
	stateRoot  string
	names      []string
}

// startPartChild starts -partition hosts in the namespace, against the
// members' addresses on the veth.
func (s *Sim) startPartChild() error {
	eps := make([]string, len(s.cell.members))
	for i, m := range s.cell.members {
		eps[i] = m.vethURL
	}
	root, err := os.MkdirTemp(s.cell.dir, "partition-state-")
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	c := &partChild{statusFile: filepath.Join(root, "status.json"), stateRoot: root}
	clients := max(1, min(s.opts.Clients, s.opts.Partition/100))
	args := []string{"netns", "exec", s.net.ns, self, "-partition-child", c.statusFile,
		"-hosts", strconv.Itoa(s.opts.Partition), "-clients", strconv.Itoa(clients),
		"-groups", strconv.Itoa(s.opts.Groups), "-endpoints", strings.Join(eps, ","),
		"-prefix", s.opts.Prefix, "-ttl", s.opts.LeaseTTL.String(), "-request-timeout", s.opts.RequestTimeout.String(),
		"-spread", s.opts.Spread.String(), "-status-interval", s.opts.StatusInterval.String(),
		"-data-dir", filepath.Join(root, "hosts")}
	cmd := exec.Command("ip", args...)
	lf, err := os.Create(filepath.Join(root, "child.log"))
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the partitioned hosts: %w", err)
	}
	c.done = make(chan struct{})
	go func() { _ = cmd.Wait(); close(c.done) }()
	c.cmd = cmd
	for i := 0; i < s.opts.Partition; i++ {
		c.names = append(c.names, partHostName(i))
	}
	s.part = c
	return nil
}

func partHostName(i int) string { return fmt.Sprintf("part-%06d", i) }

func (c *partChild) stop() {
	if c == nil || c.cmd == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	c.cmd = nil
}

// childStatus is what the partitioned hosts' process reports in its status
// file, every 200 ms.
type childStatus struct {
	Seq int `json:"seq"`
	// Applied counts the hosts by the revision and stop flag their applier
	// holds ("rev/stopped").
	Applied map[string]int `json:"applied"`
	// Restarts is how many SIGUSR1 restarts were done; Restarted how many
	// hosts the last one restarted and RestartApplyMS, for each, the time
	// from its new loop's start to its applier's first state.
	Restarts       int       `json:"restarts"`
	Restarted      int       `json:"restarted"`
	RestartApplyMS []float64 `json:"restart_apply_ms"`
	// RestartApplied counts the restarted hosts by the state their new
	// applier got ("rev/stopped").
	RestartApplied map[string]int `json:"restart_applied"`
}

func (c *partChild) status() (childStatus, error) {
	var st childStatus
	b, err := os.ReadFile(c.statusFile)
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// waitStatus polls the child's status until ok or the timeout.
func (c *partChild) waitStatus(ctx context.Context, timeout time.Duration, ok func(childStatus) bool) (childStatus, bool) {
	deadline := time.Now().Add(timeout)
	var st childStatus
	for time.Now().Before(deadline) && ctx.Err() == nil {
		var err error
		if st, err = c.status(); err == nil && ok(st) {
			return st, true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return st, false
}

// partition cuts the partitioned hosts off, waits until the cell sees them
// offline, changes the fleet's stop flag, restarts a tenth of the cut-off
// hosts (they must apply their persisted state, the pre-partition one),
// heals and measures until every partitioned host acknowledged the change.
func (s *Sim) partition(ctx context.Context) ([]Result, error) {
	c := s.part
	want := map[string]bool{}
	for _, n := range c.names {
		want[n] = true
	}
	k := len(c.names)
	before := fmt.Sprintf("%d/%v", s.lastFleetRev, s.stopped)
	if s.lastFleetRev == 0 {
		before = ""
	}
	rev, err := s.currentRev(ctx)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs := s.watchAgents(wctx, s.ks.Agents(), true, rev+1)
	tCut := time.Now()
	if err := s.net.cut(); err != nil {
		return nil, err
	}
	ttl := s.opts.LeaseTTL
	gone := waitHosts(ctx, evs, want, tCut, 3*ttl+time.Duration(k/500+5)*time.Second, func(e agentEvent) bool { return e.deleted })
	_, _, goneMax := percentiles(gone)
	res := []Result{result("partition-offline", k, k, gone, 0, fmt.Sprintf("each within TTL×4/3 = %s", ttl*4/3),
		len(gone) == k && goneMax <= ms(ttl*4/3),
		fmt.Sprintf("link of %d hosts' namespace cut (veth down); latency = cut to the registration's deletion (lease expiry)", k))}

	// The fleet changes while they are away.
	stop := !s.stopped
	fleet := s.ks.ScopeKey(api.Scope{Kind: api.ScopeFleet})
	wrote, err := s.put(ctx, fleet, docValue("fleet", api.DesiredState{Stop: &stop}, "vigil-sim partition"))
	if err != nil {
		_ = s.net.heal()
		return nil, fmt.Errorf("writing fleet stop=%v: %w", stop, err)
	}
	s.stopped, s.lastFleetRev = stop, wrote

	// Cut-off hosts keep their state; a tenth restart and must apply the
	// persisted one.
	st0, _ := c.status()
	_ = c.cmd.Process.Signal(syscall.SIGUSR1)
	st, restartedOK := c.waitStatus(ctx, 30*time.Second, func(st childStatus) bool {
		n := 0
		for _, v := range st.RestartApplied {
			n += v
		}
		return st.Restarts > st0.Restarts && n == st.Restarted && st.Restarted > 0
	})
	kept := st.Applied[before]
	var rlat []time.Duration
	for _, v := range st.RestartApplyMS {
		rlat = append(rlat, time.Duration(v*float64(time.Millisecond)))
	}
	_, _, rmax := percentiles(rlat)
	keptOK := before == "" || (kept == k && st.RestartApplied[before] == st.Restarted)
	res = append(res, result("partition-persisted", k, st.Restarted, rlat, 0, "restarted hosts apply the persisted state within 2s",
		restartedOK && keptOK && rmax <= 2000,
		fmt.Sprintf("while cut off: %d of %d hosts hold the pre-partition state %q; %d restarted hosts got %v from their state directory; latency = restart to Apply", kept, k, before, st.Restarted, st.RestartApplied)))

	// Heal: every partitioned host must come back and acknowledge.
	rev2, err := s.currentRev(ctx)
	if err != nil {
		_ = s.net.heal()
		return nil, err
	}
	evs2 := s.watchAgents(wctx, s.ks.Agents(), true, rev2+1)
	tHeal := time.Now()
	if err := s.net.heal(); err != nil {
		return nil, err
	}
	lat := waitHosts(ctx, evs2, want, tHeal, 120*time.Second, func(e agentEvent) bool {
		return !e.deleted && e.reg.Applied.Revision >= wrote && e.reg.Stopped == stop
	})
	total := time.Since(tHeal)
	if len(lat) < k {
		total = 0
	}
	res = append(res, result("partition-converge", k, k, lat, total, "all re-registered and acknowledged (informational)", len(lat) == k,
		fmt.Sprintf("fleet key stop=%v written at revision %d during the partition; latency = heal (veth up) to the host's registration showing it; bounded by control.backoff_max (30s) and the re-registration spread", stop, wrote)))
	return res, nil
}

// runPartChild is the process in the namespace: it runs the hosts until
// SIGTERM, restarts a tenth of them on SIGUSR1, and writes its status file.
func runPartChild(ctx context.Context, o Options, statusFile string) error {
	if len(o.Endpoints) == 0 || o.DataDir == "" {
		return errors.New("-partition-child needs -endpoints and -data-dir")
	}
	var clients []*clientv3.Client
	for i := 0; i < o.Clients; i++ {
		cli, err := clientv3.New(clientv3.Config{
			Endpoints:   o.Endpoints,
			DialTimeout: 5 * time.Second,
			// As host/control's own client: pings find a dead link.
			DialKeepAliveTime:    5 * time.Second,
			DialKeepAliveTimeout: 3 * time.Second,
			Logger:               zap.NewNop(),
		})
		if err != nil {
			return err
		}
		old := cli.Lease
		cli.Lease = clientv3.NewLeaseFromLeaseClient(clientv3.RetryLeaseClient(cli), cli, o.LeaseTTL)
		_ = old.Close()
		defer cli.Close()
		clients = append(clients, cli)
	}
	type phost struct {
		loop    *control.Loop
		applier *noopApplier
	}
	hosts := make([]*phost, o.Hosts)
	s := &Sim{opts: o}
	start := func(i int) (*phost, error) {
		name := partHostName(i)
		a := newNoopApplier()
		l, err := control.Start(ctx, control.Config{
			Endpoints: o.Endpoints, Prefix: o.Prefix, Host: name, Labels: s.labels(i), Version: "sim",
			LeaseTTL: o.LeaseTTL, RequestTimeout: o.RequestTimeout, StatusInterval: o.StatusInterval,
			Spread: o.Spread, StateDir: filepath.Join(o.DataDir, name),
		}, a, nil, control.WithClient(clients[i%len(clients)]))
		if err != nil {
			return nil, err
		}
		return &phost{loop: l, applier: a}, nil
	}
	for i := range hosts {
		h, err := start(i)
		if err != nil {
			return err
		}
		hosts[i] = h
	}
	var mu sync.Mutex
	st := childStatus{}
	var restarted []*phost
	var restartAt time.Time
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	write := func() {
		mu.Lock()
		defer mu.Unlock()
		st.Seq++
		st.Applied = map[string]int{}
		for _, h := range hosts {
			if r := h.applier.rev.Load(); r > 0 {
				st.Applied[fmt.Sprintf("%d/%v", r, h.applier.stopped.Load())]++
			}
		}
		st.RestartApplied = map[string]int{}
		st.RestartApplyMS = st.RestartApplyMS[:0]
		for _, h := range restarted {
			if r := h.applier.rev.Load(); r > 0 {
				st.RestartApplied[fmt.Sprintf("%d/%v", r, h.applier.stopped.Load())]++
				st.RestartApplyMS = append(st.RestartApplyMS, ms(time.Duration(h.applier.firstAt.Load()-restartAt.UnixNano())))
			}
		}
		b, _ := json.Marshal(st)
		tmp := statusFile + ".tmp"
		if os.WriteFile(tmp, b, 0o644) == nil {
			_ = os.Rename(tmp, statusFile)
		}
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			var wg sync.WaitGroup
			for _, h := range hosts {
				wg.Add(1)
				go func() { defer wg.Done(); h.loop.Abandon() }()
			}
			wg.Wait()
			return nil
		case <-usr1:
			n := max(1, len(hosts)/10)
			var wg sync.WaitGroup
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func() { defer wg.Done(); hosts[i].loop.Abandon() }()
			}
			wg.Wait()
			mu.Lock()
			restartAt = time.Now()
			restarted = restarted[:0]
			for i := 0; i < n; i++ {
				h, err := start(i)
				if err != nil {
					mu.Unlock()
					return err
				}
				hosts[i] = h
				restarted = append(restarted, h)
			}
			st.Restarts++
			st.Restarted = n
			mu.Unlock()
		case <-tick.C:
			write()
		}
	}
}
