package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// cell is an etcd cluster of child processes started by the simulator:
// either N copies of this binary each running one embedded etcd 3.7.3
// member (-serve-member, the version vigil-server embeds), or N processes
// of an etcd binary (-etcd-bin, e.g. Debian's /usr/bin/etcd 3.4). Each
// member is a process of its own, so that a leader can be killed for real.
type cell struct {
	members  []*member
	dir      string // parent of the members' data, removed by close
	own      bool   // dir was created by the simulator
	bin      string // "" = this binary with -serve-member
	gogc     int    // GOGC of the member processes (0: Go's default, 100; -1: off)
	memlimit string // GOMEMLIMIT of the member processes ("": none)
	procs    int    // GOMAXPROCS of the member processes (0: Go's default)
	// maxTerm is the highest raft term watchLeader saw: elections that
	// re-elect the same leader change it too.
	maxTerm atomic.Uint64
}

type member struct {
	name, dataDir, clientURL, peerURL, logPath string
	vethURL                                    string
	args                                       []string
	cmd                                        *exec.Cmd
	done                                       chan struct{}
}

// cellConfig is how startCell starts a cell.
type cellConfig struct {
	n       int    // members
	bin     string // "" = this binary with -serve-member, else an etcd binary
	base    string // parent of the cell's directory ("": /dev/shm if present)
	noFsync bool
	// vethIP, when set, makes each member listen for clients on that
	// address too (member.vethURL), for the partitioned hosts.
	vethIP string
	// heartbeat and election (0: etcd's defaults, 100 ms and 1 s) are the
	// raft timings of every member.
	heartbeat, election time.Duration
	gogc                int    // > 0: GOGC of the member processes; -1: off
	memlimit            string // GOMEMLIMIT of the member processes ("": none)
	gomaxprocs          int    // > 0: GOMAXPROCS of the member processes
	// logLevel is the members' log level (debug, info, warn, error); ""
	// logs nothing from the embedded members (warn for an etcd binary).
	logLevel string
	keep     bool // leave the cell's directory (data, logs) on close
}

// startCell starts cc.n members with their data under cc.base and waits
// for a leader.
func startCell(cc cellConfig) (*cell, error) {
	n, bin, base := cc.n, cc.bin, cc.base
	if n < 1 {
		return nil, fmt.Errorf("-cluster must be at least 1 (got %d)", n)
	}
	if base == "" && dirExists("/dev/shm") {
		base = "/dev/shm"
	}
	dir, err := os.MkdirTemp(base, "vigil-sim-cell-")
	if err != nil {
		return nil, err
	}
	c := &cell{dir: dir, own: !cc.keep, bin: bin, gogc: cc.gogc, memlimit: cc.memlimit, procs: cc.gomaxprocs}
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	var initial []string
	for i := 0; i < n; i++ {
		m := &member{
			name:      fmt.Sprintf("m%d", i),
			dataDir:   filepath.Join(dir, fmt.Sprintf("m%d.etcd", i)),
			clientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			logPath:   filepath.Join(dir, fmt.Sprintf("m%d.log", i)),
		}
		if cc.vethIP != "" {
			m.vethURL = fmt.Sprintf("http://%s:%d", cc.vethIP, ports[2*i])
		}
		initial = append(initial, m.name+"="+m.peerURL)
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		listen := m.clientURL
		if m.vethURL != "" {
			listen += "," + m.vethURL
		}
		m.args = []string{
			"--name", m.name,
			"--data-dir", m.dataDir,
			"--listen-client-urls", listen,
			"--advertise-client-urls", m.clientURL,
			"--listen-peer-urls", m.peerURL,
			"--initial-advertise-peer-urls", m.peerURL,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", filepath.Base(dir),
			"--quota-backend-bytes", strconv.Itoa(8 << 30),
		}
		if cc.heartbeat > 0 {
			m.args = append(m.args, "--heartbeat-interval", strconv.FormatInt(cc.heartbeat.Milliseconds(), 10))
		}
		if cc.election > 0 {
			m.args = append(m.args, "--election-timeout", strconv.FormatInt(cc.election.Milliseconds(), 10))
		}
		if bin != "" {
			level := cc.logLevel
			if level == "" {
				level = "warn"
			}
			m.args = append(m.args, "--logger", "zap", "--log-outputs", m.logPath, "--log-level", level)
		} else if cc.logLevel != "" {
			m.args = append(m.args, "--log-level", cc.logLevel) // to stderr, the log file
		}
		if cc.noFsync {
			m.args = append(m.args, "--unsafe-no-fsync")
		}
		// pprof on the client URL: idle unless queried (-profile-dir).
		m.args = append(m.args, "--enable-pprof")
	}
	for _, m := range c.members {
		if err := c.start(m); err != nil {
			c.close()
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.waitLeader(ctx, -1); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func (c *cell) describe() string {
	kind := "embedded etcd 3.7.3 (vigil-sim -serve-member)"
	if c.bin != "" {
		kind = c.bin
		if out, err := exec.Command(c.bin, "--version").Output(); err == nil {
			kind += " " + strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
		}
	}
	return fmt.Sprintf("%d members, one process each: %s, data on %s", len(c.members), kind, c.dir)
}

func (c *cell) endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL
	}
	return eps
}

func (c *cell) start(m *member) error {
	var cmd *exec.Cmd
	if c.bin != "" {
		cmd = exec.Command(c.bin, m.args...)
	} else {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		cmd = exec.Command(self, append([]string{"-serve-member"}, m.args...)...)
		lf, err := os.Create(m.logPath)
		if err != nil {
			return err
		}
		cmd.Stdout, cmd.Stderr = lf, lf
		defer lf.Close()
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// The members run with Go's defaults but for -member-gogc,
	// -member-memlimit and -member-gomaxprocs, and without the
	// simulator's own GODEBUG (see -shrink-stacks).
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") && !strings.HasPrefix(kv, "GOGC=") && !strings.HasPrefix(kv, "GOMAXPROCS=") &&
			!strings.HasPrefix(kv, "GOMEMLIMIT=") {
			env = append(env, kv)
		}
	}
	switch {
	case c.gogc > 0:
		env = append(env, "GOGC="+strconv.Itoa(c.gogc))
	case c.gogc < 0:
		env = append(env, "GOGC=off")
	}
	if c.memlimit != "" {
		env = append(env, "GOMEMLIMIT="+c.memlimit)
	}
	if c.procs > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(c.procs))
	}
	cmd.Env = env
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting etcd member %s: %w", m.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	m.cmd, m.done = cmd, done
	return nil
}

// kill stops member i with SIGKILL and waits for it to exit.
func (c *cell) kill(i int) {
	m := c.members[i]
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.done
	m.cmd, m.done = nil, nil
}

// restart starts a killed member again on its data directory.
func (c *cell) restart(ctx context.Context, i int) error {
	if err := c.start(c.members[i]); err != nil {
		return err
	}
	_, err := c.waitLeader(ctx, -1)
	return err
}

func (c *cell) close() {
	for i := range c.members {
		c.kill(i)
	}
	if c.own {
		_ = os.RemoveAll(c.dir)
	}
}

// leader returns the index of the member the running members agree leads,
// waiting for one other than not (-1: any).
func (c *cell) waitLeader(ctx context.Context, not int) (int, error) {
	var last error
	for {
		i, err := c.leader(ctx, not)
		if err == nil {
			return i, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("etcd cell has no leader: %w (member logs in %s)", last, c.dir)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *cell) leader(ctx context.Context, not int) (int, error) {
	var id uint64
	ids := map[uint64]int{}
	for i, m := range c.members {
		if m.cmd == nil {
			continue
		}
		st, err := memberStatus(ctx, m.clientURL)
		if err != nil {
			return -1, fmt.Errorf("status of %s: %w", m.name, err)
		}
		if st.Leader == 0 || (id != 0 && st.Leader != id) {
			return -1, fmt.Errorf("%s has no leader or disagrees", m.name)
		}
		id = st.Leader
		ids[st.Header.MemberId] = i
	}
	i, ok := ids[id]
	if !ok {
		return -1, errors.New("the leader is not a running member")
	}
	if i == not {
		return -1, fmt.Errorf("%s still leads", c.members[i].name)
	}
	return i, nil
}

func memberStatus(ctx context.Context, ep string) (*clientv3.StatusResponse, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return cli.Status(ctx, ep)
}

// watchLeader polls the members' status every second until ctx ends and
// counts the changes of leader (the simulator's own kills included) and
// the polls that found no leader.
func (c *cell) watchLeader(ctx context.Context, changes, leaderless *atomic.Int64) {
	var last uint64
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var id uint64
		for _, m := range c.members {
			if m.cmd == nil {
				continue
			}
			st, err := memberStatus(ctx, m.clientURL)
			if err == nil && st.Leader != 0 {
				id = st.Leader
				if t := st.Header.RaftTerm; t > c.maxTerm.Load() {
					c.maxTerm.Store(t)
				}
				break
			}
		}
		if id == 0 {
			leaderless.Add(1)
			continue
		}
		if last != 0 && id != last {
			changes.Add(1)
		}
		last = id
	}
}

// MemberStat is one etcd member process's resource use.
type MemberStat struct {
	Name       string  `json:"name"`
	RSSMB      float64 `json:"rss_mb"`
	CPUSeconds float64 `json:"cpu_seconds"`
	Running    bool    `json:"running"`
}

// stats reads every running member's RSS and CPU time from /proc.
func (c *cell) stats() []MemberStat {
	var out []MemberStat
	for _, m := range c.members {
		st := MemberStat{Name: m.name}
		if m.cmd != nil {
			st.Running = true
			st.RSSMB, st.CPUSeconds = procStats(m.cmd.Process.Pid)
		}
		out = append(out, st)
	}
	return out
}

// procStats returns a process's resident memory (MiB) and CPU time (s).
func procStats(pid int) (rssMB, cpuS float64) {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				rssMB = kb / 1024
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		s := string(b)
		if j := strings.LastIndexByte(s, ')'); j > 0 {
			f := strings.Fields(s[j+1:])
			if len(f) > 13 {
				ut, _ := strconv.ParseFloat(f[11], 64)
				st, _ := strconv.ParseFloat(f[12], 64)
				cpuS = (ut + st) / 100 // USER_HZ
			}
		}
	}
	return rssMB, cpuS
}

// serveMember runs one embedded etcd member from etcd-style flags (the
// subset startCell passes) until ctx ends.
func serveMember(ctx context.Context, args []string) error {
	cfg := embed.NewConfig()
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.LogOutputs = []string{embed.StdErrLogOutput}
	// etcd formats every unary request slower than this as text for a
	// warning (logUnaryRequestStats), before the logger drops it; on a
	// saturated cell that is every request. The member logs nothing.
	cfg.WarningUnaryRequestDuration = time.Hour
	u := func(s string) ([]url.URL, error) {
		var out []url.URL
		for _, p := range strings.Split(s, ",") {
			v, err := url.Parse(p)
			if err != nil {
				return nil, err
			}
			out = append(out, *v)
		}
		return out, nil
	}
	for i := 0; i < len(args); i++ {
		k := args[i]
		if k == "--unsafe-no-fsync" {
			cfg.UnsafeNoFsync = true
			continue
		}
		if k == "--enable-pprof" {
			cfg.EnablePprof = true // served on the client URL, /debug/pprof/
			continue
		}
		if i+1 >= len(args) {
			return fmt.Errorf("-serve-member: %s needs a value", k)
		}
		v := args[i+1]
		i++
		var err error
		switch k {
		case "--name":
			cfg.Name = v
		case "--data-dir":
			cfg.Dir = v
		case "--listen-client-urls":
			cfg.ListenClientUrls, err = u(v)
		case "--advertise-client-urls":
			cfg.AdvertiseClientUrls, err = u(v)
		case "--listen-peer-urls":
			cfg.ListenPeerUrls, err = u(v)
		case "--initial-advertise-peer-urls":
			cfg.AdvertisePeerUrls, err = u(v)
		case "--initial-cluster":
			cfg.InitialCluster = v
		case "--initial-cluster-state":
			cfg.ClusterState = v
		case "--initial-cluster-token":
			cfg.InitialClusterToken = v
		case "--log-level":
			// Logged to stderr (the member's log file), with etcd's own
			// zap configuration; nothing is logged without this flag.
			cfg.LogLevel, cfg.ZapLoggerBuilder = v, nil
		case "--quota-backend-bytes":
			cfg.QuotaBackendBytes, err = strconv.ParseInt(v, 10, 64)
		case "--heartbeat-interval", "--election-timeout":
			var n uint64
			n, err = strconv.ParseUint(v, 10, 32)
			if k == "--heartbeat-interval" {
				cfg.TickMs = uint(n)
			} else {
				cfg.ElectionMs = uint(n)
			}
		default:
			return fmt.Errorf("-serve-member: unknown flag %s", k)
		}
		if err != nil {
			return fmt.Errorf("-serve-member: %s %q: %w", k, v, err)
		}
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("starting embedded etcd member: %w", err)
	}
	defer e.Close()
	select {
	case <-ctx.Done():
	case err := <-e.Err():
		return err
	}
	return nil
}

// proxies are etcd gRPC proxies (etcd grpc-proxy start) in front of a
// cell: the hosts connect to them, the simulated server to the members.
// A proxy coalesces identical watches (the fleet key, the group keys) into
// one upstream watch and serves the events to every watcher itself.
type proxies struct {
	urls []string
	cmds []*exec.Cmd
	done []chan struct{}
}

func startProxies(n int, bin string, upstream []string, dir string) (*proxies, error) {
	p := &proxies{}
	ports, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	for i := 0; i < n; i++ {
		addr := fmt.Sprintf("127.0.0.1:%d", ports[i])
		var eps []string
		for _, u := range upstream {
			eps = append(eps, strings.TrimPrefix(u, "http://"))
		}
		cmd := exec.Command(bin, "grpc-proxy", "start", "--listen-addr", addr, "--advertise-client-url", addr,
			"--endpoints", strings.Join(eps, ","), "--data-dir", filepath.Join(dir, fmt.Sprintf("proxy%d", i)))
		lf, err := os.Create(filepath.Join(dir, fmt.Sprintf("proxy%d.log", i)))
		if err != nil {
			p.close()
			return nil, err
		}
		cmd.Stdout, cmd.Stderr = lf, lf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		err = cmd.Start()
		lf.Close()
		if err != nil {
			p.close()
			return nil, fmt.Errorf("starting gRPC proxy %d: %w", i, err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		p.cmds, p.done, p.urls = append(p.cmds, cmd), append(p.done, done), append(p.urls, "http://"+addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, u := range p.urls {
		for {
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{u}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
			if err == nil {
				rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
				_, err = cli.Get(rctx, "/vigil-sim-proxy-probe")
				rcancel()
				cli.Close()
			}
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				p.close()
				return nil, fmt.Errorf("gRPC proxy %s not ready: %w (logs in %s)", u, err, dir)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return p, nil
}

func (p *proxies) stats() []MemberStat {
	var out []MemberStat
	for i, c := range p.cmds {
		st := MemberStat{Name: fmt.Sprintf("proxy%d", i), Running: true}
		st.RSSMB, st.CPUSeconds = procStats(c.Process.Pid)
		out = append(out, st)
	}
	return out
}

func (p *proxies) close() {
	if p == nil {
		return
	}
	for i, c := range p.cmds {
		_ = c.Process.Signal(syscall.SIGKILL)
		<-p.done[i]
	}
	p.cmds = nil
}
