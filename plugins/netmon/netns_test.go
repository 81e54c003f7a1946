package netmon

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/sdktest"
)

// nsHelperEnv makes the test binary run nsHelper instead of the tests: a
// process started in a new network namespace (CLONE_NEWNET), like a
// container's, holding a listener and an established loopback connection
// there.
const nsHelperEnv = "NETMON_NS_HELPER_PORT"

// nsHelper brings lo up in its namespace, listens on 127.0.0.1:port (0:
// any), connects to itself, prints "ready PORT" and holds the sockets
// until its stdin closes.
func nsHelper(port string) {
	fail := func(err error) {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fail(err)
	}
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		fail(err)
	}
	ifr.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		fail(fmt.Errorf("bringing lo up: %w", err))
	}
	_ = unix.Close(fd)
	l, err := net.Listen("tcp4", "127.0.0.1:"+port)
	if err != nil {
		fail(err)
	}
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		fail(err)
	}
	a, err := l.Accept()
	if err != nil {
		fail(err)
	}
	fmt.Println("ready", l.Addr().(*net.TCPAddr).Port)
	_, _ = io.Copy(io.Discard, os.Stdin)
	_, _, _ = a.Close(), c.Close(), l.Close()
}

// nsProc is a running nsHelper.
type nsProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	port  int64
	netns uint32
}

// startNSHelper starts nsHelper in a new network namespace (root only).
func startNSHelper(tb testing.TB, port int64) *nsProc {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), nsHelperEnv+"="+strconv.FormatInt(port, 10))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting a process in a new network namespace: %v", err)
	}
	p := &nsProc{cmd: cmd, stdin: in}
	tb.Cleanup(p.stop)
	line, err := bufio.NewReader(out).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != 2 || f[0] != "ready" {
		tb.Fatalf("namespace helper: %q %v", line, err)
	}
	p.port, _ = strconv.ParseInt(f[1], 10, 64)
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid), &st); err != nil {
		tb.Fatal(err)
	}
	p.netns = uint32(st.Ino)
	return p
}

func (p *nsProc) stop() {
	if p.stdin != nil {
		_ = p.stdin.Close()
		p.stdin = nil
		_ = p.cmd.Wait()
	}
}

func needRoot(tb testing.TB) {
	if os.Geteuid() != 0 {
		tb.Skip("creating network namespaces and entering them needs root")
	}
}

// TestAllNamespaces: a process in its own network namespace (a container)
// listens on the same port as a listener in ours and connects to it over
// its own loopback. Both listeners are reported, each with its namespace;
// the connection is reported with the namespace and the process; when the
// process exits its namespace's socket and fd are closed.
func TestAllNamespaces(t *testing.T) {
	needRoot(t)
	root := listen(t, "tcp4", "127.0.0.1:0")
	port := portOf(root.Addr())
	h := startNSHelper(t, port)
	pid := int64(h.cmd.Process.Pid)

	f := newFixture(t, nil)
	if h.netns == f.m.selfNS || f.m.selfNS == 0 {
		t.Fatalf("namespaces: helper %d, ours %d", h.netns, f.m.selfNS)
	}
	evs := f.snap()
	ls := find(evs, TypeListenerNew, onPort(port))
	if len(ls) != 2 {
		t.Fatalf("want 2 listeners on port %d (ours and the namespace's), got %v", port, ls)
	}
	byNS := map[int64]recorded{}
	for _, e := range ls {
		byNS[e.num("netns")] = e
	}
	if e, ok := byNS[int64(f.m.selfNS)]; !ok || e.num("pid") != int64(os.Getpid()) {
		t.Fatalf("our listener not reported with our namespace %d and pid: %v", f.m.selfNS, ls)
	}
	if e, ok := byNS[int64(h.netns)]; !ok || e.num("pid") != pid {
		t.Fatalf("the namespace's listener not reported with namespace %d and pid %d: %v", h.netns, pid, ls)
	}
	cs := find(evs, TypeConnectionNew, toRemote("127.0.0.1", port))
	if len(cs) != 1 || cs[0].num("netns") != int64(h.netns) || cs[0].num("pid") != pid || cs[0].num("count") != 1 {
		t.Fatalf("want one connection_new in namespace %d by pid %d, got %v", h.netns, pid, cs)
	}
	n := f.m.nss[h.netns]
	if n == nil || n.d == nil || n.fd < 0 {
		t.Fatalf("namespace %d not open: %+v", h.netns, n)
	}
	if got := f.em.Counter(CounterNetNSDumped).Load(); got < 1 {
		t.Fatalf("netns_dumped = %d", got)
	}
	if evs := f.snap(); len(find(evs, TypeListenerNew, onPort(port))) != 0 || len(find(evs, TypeListenerClosed, onPort(port))) != 0 {
		t.Fatalf("nothing changed, yet: %v", evs)
	}

	// Without all_namespaces only our own namespace is dumped.
	f0 := newFixture(t, func(c *Config) { c.AllNamespaces = false })
	for _, e := range f0.snap() {
		if e.num("netns") != int64(f0.m.selfNS) && (e.Type == TypeListenerNew || e.Type == TypeConnectionNew) {
			t.Fatalf("all_namespaces false reported another namespace: %v", e)
		}
	}
	if len(f0.m.nss) != 0 {
		t.Fatalf("all_namespaces false opened namespaces: %v", f0.m.nss)
	}

	// The process exits: its namespace is dropped (socket and fd closed),
	// its listener reported closed, ours not, and snapshots go on.
	h.stop()
	var closed []recorded
	for range 2 {
		closed = append(closed, find(f.snap(), TypeListenerClosed, onPort(port))...)
	}
	if len(closed) != 1 || closed[0].num("netns") != int64(h.netns) {
		t.Fatalf("want the namespace's listener closed once, got %v", closed)
	}
	if f.m.nss[h.netns] != nil || n.fd != -1 || n.d != nil {
		t.Fatalf("namespace %d still open: %+v", h.netns, n)
	}
	if got := f.em.Counter(CounterNetNSErrors).Load(); got != 0 {
		t.Logf("netns_errors = %d (other namespaces on this machine)", got)
	}
}

// TestNamespaceFoundLater: a namespace that appears after the first
// snapshot is found by the next snapshot's /proc listing and dumped from
// the one after.
func TestNamespaceFoundLater(t *testing.T) {
	needRoot(t)
	f := newFixture(t, nil)
	f.snap()
	h := startNSHelper(t, 0)
	var ls []recorded
	for i := 0; i < 2 && len(ls) == 0; i++ {
		ls = find(f.snap(), TypeListenerNew, onPort(h.port))
	}
	if len(ls) != 1 || ls[0].num("netns") != int64(h.netns) || ls[0].num("pid") != int64(h.cmd.Process.Pid) {
		t.Fatalf("want the new namespace's listener within two snapshots, got %v", ls)
	}
}

// TestNamespaceDumpFails: a namespace whose dump fails is counted and
// logged, keeps its listeners (not reported closed), and does not stop the
// snapshot or the other namespaces.
func TestNamespaceDumpFails(t *testing.T) {
	needRoot(t)
	h1 := startNSHelper(t, 0)
	h2 := startNSHelper(t, 0)
	f := newFixture(t, nil)
	evs := f.snap()
	for _, h := range []*nsProc{h1, h2} {
		if ls := find(evs, TypeListenerNew, onPort(h.port)); len(ls) != 1 || ls[0].num("netns") != int64(h.netns) {
			t.Fatalf("listener of namespace %d: %v", h.netns, ls)
		}
	}
	// Break h1's namespace socket: closed, and made again through an fd
	// that is no namespace (setns fails).
	n := f.m.nss[h1.netns]
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	_ = n.d.Close()
	n.d.nsFD = int(devNull.Fd())
	before := f.em.Counter(CounterNetNSErrors).Load()

	h2.stop() // and h2's listener closes meanwhile
	evs = f.snap()
	if got := f.em.Counter(CounterNetNSErrors).Load() - before; got != 1 {
		t.Fatalf("netns_errors went up by %d, want 1", got)
	}
	if c := find(evs, TypeListenerClosed, onPort(h1.port)); len(c) != 0 {
		t.Fatalf("the failed namespace's listener was reported closed: %v", c)
	}
	if c := find(evs, TypeListenerClosed, onPort(h2.port)); len(c) != 1 || c[0].num("netns") != int64(h2.netns) {
		t.Fatalf("the other namespace's closed listener: %v", c)
	}
	if !n.logged || n.fails != 1 {
		t.Fatalf("failure not recorded: %+v", n)
	}
	n.d.nsFD = n.fd // repaired: the next dump opens its socket again
	f.snap()
	if n.fails != 0 {
		t.Fatalf("namespace still failing: %+v", n)
	}
}

// BenchmarkSnapshotNamespaces measures a steady snapshot (default config,
// budget lifted) with N extra network namespaces, each a process holding a
// listener and an established loopback connection (3 sockets). cpu-us/op
// is the snapshot thread's CPU time (Stats.CPU), netns the namespaces
// known (ours included, and any other on the machine).
func BenchmarkSnapshotNamespaces(b *testing.B) {
	needRoot(b)
	cases := []struct {
		n        int
		all, udp bool
	}{{0, true, true}, {10, true, true}, {50, true, true}, {50, false, true}, {50, true, false}}
	for _, c := range cases {
		{
			n, all := c.n, c.all
			b.Run(fmt.Sprintf("ns=%d/all_namespaces=%v/udp=%v", n, all, c.udp), func(b *testing.B) {
				for range n {
					startNSHelper(b, 0)
				}
				cfg := DefaultConfig()
				cfg.SnapshotBudget = sdk.Duration(time.Minute)
				cfg.AllNamespaces = all
				cfg.UDP = c.udp
				em := newRecorder()
				m, err := newMonitor(cfg, nil, sdktest.NewFakeClock(time.Unix(1_700_000_000, 0)), em)
				if err != nil {
					b.Fatal(err)
				}
				defer m.Close()
				if _, err := m.snapshot(); err != nil { // first: everything new
					b.Fatal(err)
				}
				var cpu time.Duration
				var sockets int
				b.ResetTimer()
				for range b.N {
					st, err := m.snapshot()
					if err != nil || st.Truncated {
						b.Fatalf("snapshot: %v %+v", err, st)
					}
					cpu += st.CPU
					sockets = st.Sockets
					em.take()
				}
				b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/op")
				b.ReportMetric(float64(sockets), "sockets")
				b.ReportMetric(float64(em.Counter(CounterNetNS).Load()), "netns")
			})
		}
	}
}

// TestNSFields: the namespace of a socket, and its container when the
// namespace was found through a containerised process.
func TestNSFields(t *testing.T) {
	m := &monitor{nss: map[uint32]*netNS{
		7: {ino: 7, runtime: "containerd", container: "abc", pod: "p-1"},
		8: {ino: 8},
	}}
	got := func(ino uint32) map[string]any {
		out := map[string]any{}
		for _, f := range m.nsFields(nil, ino) {
			if f.Kind == sdk.KindInt {
				out[f.Key] = f.Int
			} else {
				out[f.Key] = f.Str
			}
		}
		return out
	}
	if g := got(7); len(g) != 4 || g["netns"] != int64(7) || g["container_runtime"] != "containerd" || g["container_id"] != "abc" || g["pod_uid"] != "p-1" {
		t.Fatalf("namespace in a pod: %v", g)
	}
	if g := got(8); len(g) != 1 || g["netns"] != int64(8) {
		t.Fatalf("namespace without a container: %v", g)
	}
	if g := got(1); len(g) != 1 || g["netns"] != int64(1) {
		t.Fatalf("our namespace: %v", g)
	}
}

// burnCPU spends d of the calling thread's CPU time (the snapshot's
// thread, when called from a dumper's tap), so a budget is spent however
// loaded the machine is.
func burnCPU(d time.Duration) {
	for t0 := threadCPU(); threadCPU()-t0 < d; {
	}
}

// nsIndex returns where namespace ino is in the dump order.
func nsIndex(m *monitor, ino uint32) int {
	for i, o := range m.nsOrder {
		if o == ino {
			return i
		}
	}
	return -1
}

// startEmptyNS starts a process in a new network namespace that holds no
// socket (like a service with PrivateNetwork) and returns the namespace.
func startEmptyNS(tb testing.TB) uint32 {
	tb.Helper()
	cmd := exec.Command("sleep", "3600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting a process in a new network namespace: %v", err)
	}
	tb.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid), &st); err != nil {
		tb.Fatal(err)
	}
	return uint32(st.Ino)
}

// TestNamespaceBudget: the snapshot's CPU budget holds across namespaces.
// The budget is checked after each datagram that does not end a dump, and
// a namespace without sockets answers each dump with NLMSG_DONE alone (yet
// the kernel walks its shared tables for it): once the budget is spent in
// one, the namespaces after it are left (netns_skipped) and the snapshot
// is truncated.
func TestNamespaceBudget(t *testing.T) {
	needRoot(t)
	empty := startEmptyNS(t)
	h := startNSHelper(t, 0)
	f := newFixture(t, nil)
	f.snap() // lists /proc first: both namespaces are open and dumped
	if nsIndex(f.m, empty) < 0 || nsIndex(f.m, h.netns) < 0 {
		t.Fatalf("namespaces %d and %d not open: %v", empty, h.netns, f.m.nsOrder)
	}
	const budget = 50 * time.Millisecond
	f.m.cfg.SnapshotBudget = sdk.Duration(budget)
	// Start with the empty one (other namespaces on the machine, some
	// maybe large, are left out of the way).
	f.m.nsNext = empty
	burned, reached := false, false
	f.m.nss[empty].d.tap = func([]byte) {
		if !burned {
			burned = true
			burnCPU(budget)
		}
	}
	f.m.nss[h.netns].d.tap = func([]byte) { reached = true }
	st, err := f.m.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if !burned {
		t.Fatal("the empty namespace was not dumped")
	}
	if reached || !st.Truncated || st.NetNSLeft < 1 || f.em.Counter(CounterNetNSSkipped).Load() < 1 {
		t.Fatalf("budget spent in namespace %d, yet namespace %d after it was dumped (%v) or none was left: %+v, netns_skipped %d",
			empty, h.netns, reached, st, f.em.Counter(CounterNetNSSkipped).Load())
	}
}

// TestNamespaceBudgetRotates: when every snapshot spends its budget in
// the same namespace, the namespaces after it in the order are still
// reached: the next snapshot starts where the last one stopped.
func TestNamespaceBudgetRotates(t *testing.T) {
	needRoot(t)
	h1 := startNSHelper(t, 0)
	h2 := startNSHelper(t, 0)
	f := newFixture(t, nil)
	f.snap()
	first, second := h1, h2
	if nsIndex(f.m, first.netns) > nsIndex(f.m, second.netns) {
		first, second = second, first
	}
	if nsIndex(f.m, first.netns) < 0 {
		t.Fatalf("namespaces %d and %d not open: %v", first.netns, second.netns, f.m.nsOrder)
	}
	const budget = 50 * time.Millisecond
	f.m.cfg.SnapshotBudget = sdk.Duration(budget)
	burned, reached := false, false
	f.m.nss[first.netns].d.tap = func([]byte) {
		if !burned {
			burned = true
			burnCPU(budget)
		}
	}
	f.m.nss[second.netns].d.tap = func([]byte) { reached = true }
	f.m.nsNext = first.netns
	// Other namespaces on the machine may lie between them, and a large
	// one spend a snapshot's budget by itself: a snapshot each at most.
	for i := 0; i < len(f.m.nsOrder)+1 && !reached; i++ {
		burned = false
		st, err := f.m.snapshot()
		if err != nil {
			t.Fatal(err)
		}
		if !st.Truncated {
			t.Fatalf("snapshot %d not truncated: %+v", i, st)
		}
	}
	if !reached {
		t.Fatalf("namespace %d never dumped: each snapshot spent its budget in namespace %d before it (order %v)",
			second.netns, first.netns, f.m.nsOrder)
	}
}

// TestNamespaceGoneWhileTruncated: while every snapshot spends its budget
// (many namespaces), a listener closed in a namespace that was dumped
// completely, and the listener of a namespace that is gone, are reported
// closed, once; the listener of the namespace cut short is kept.
func TestNamespaceGoneWhileTruncated(t *testing.T) {
	needRoot(t)
	h1 := startNSHelper(t, 0)
	h2 := startNSHelper(t, 0)
	own := listen(t, "tcp4", "127.0.0.1:0")
	f := newFixture(t, nil)
	f.snap()
	first, second := h1, h2
	if nsIndex(f.m, first.netns) > nsIndex(f.m, second.netns) {
		first, second = second, first
	}
	if nsIndex(f.m, first.netns) < 0 {
		t.Fatalf("namespaces %d and %d not open: %v", first.netns, second.netns, f.m.nsOrder)
	}
	const budget = 50 * time.Millisecond
	f.m.cfg.SnapshotBudget = sdk.Duration(budget)
	burned := false
	f.m.nss[first.netns].d.tap = func([]byte) {
		if !burned {
			burned = true
			burnCPU(budget)
		}
	}
	second.stop()
	ownPort := portOf(own.Addr())
	own.Close()
	var closed []recorded
	for i := range 4 {
		burned = false
		st, err := f.m.snapshot()
		if err != nil {
			t.Fatal(err)
		}
		if !st.Truncated {
			t.Fatalf("snapshot %d not truncated: %+v", i, st)
		}
		closed = append(closed, find(f.em.take(), TypeListenerClosed, nil)...)
	}
	in := func(ns uint32, port int64) func(recorded) bool {
		return func(e recorded) bool { return e.num("netns") == int64(ns) && e.num("local_port") == port }
	}
	if c := find(closed, TypeListenerClosed, in(first.netns, first.port)); len(c) != 0 {
		t.Fatalf("the listener of the namespace cut short was reported closed: %v", c)
	}
	if c := find(closed, TypeListenerClosed, in(second.netns, second.port)); len(c) != 1 {
		t.Fatalf("want the gone namespace's listener closed once, got %v (all closed: %v)", c, closed)
	}
	if c := find(closed, TypeListenerClosed, in(f.m.selfNS, ownPort)); len(c) != 1 {
		t.Fatalf("want our closed listener reported once, got %v", c)
	}
	for k := range f.m.listeners {
		if k.netns == second.netns {
			t.Fatalf("listener of gone namespace %d still kept: %+v", second.netns, k)
		}
	}
}

// TestNamespaceOpenedThroughAnother: the process the listing named for a
// namespace exits before the namespace is opened (a short-lived process
// in a container: a health check); the namespace is opened through
// another process in it on the next snapshot, not left unwatched until a
// process in it is new or changes its fd count.
func TestNamespaceOpenedThroughAnother(t *testing.T) {
	needRoot(t)
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		t.Fatalf("this test needs nsenter (util-linux): %v", err)
	}
	h := startNSHelper(t, 0)
	q := exec.Command(nsenter, "--net=/proc/"+strconv.Itoa(h.cmd.Process.Pid)+"/ns/net", "sleep", "3600")
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = q.Process.Kill(); _ = q.Wait() }()
	qpid := int32(q.Process.Pid)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var st unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", qpid), &st); err == nil && uint32(st.Ino) == h.netns {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nsenter did not enter the helper's namespace")
		}
	}
	f := newFixture(t, nil)
	// The first snapshot's listing, as it runs before dumping; it names
	// the last process it listed in the namespace, which may be q.
	f.m.res.list()
	u := f.m.res.netns[h.netns]
	if u == nil || u.procs != 2 {
		t.Fatalf("namespace %d: %+v, want 2 processes", h.netns, u)
	}
	u.pid = qpid // as when q was listed after the helper
	_ = q.Process.Kill()
	_ = q.Wait()
	before := f.em.Counter(CounterNetNSErrors).Load()
	f.m.syncNetNS() // q is gone: not opened, and that is no error
	if got := f.em.Counter(CounterNetNSErrors).Load() - before; got != 0 {
		t.Fatalf("a process gone before its namespace was opened counted in netns_errors (+%d)", got)
	}
	f.m.nsListed = true
	var ls []recorded
	for i := 0; i < 3 && len(ls) == 0; i++ {
		ls = find(f.snap(), TypeListenerNew, onPort(h.port))
	}
	if len(ls) != 1 || ls[0].num("netns") != int64(h.netns) {
		t.Fatalf("namespace %d never opened through the helper (pid %d): listeners %v, open %v",
			h.netns, h.cmd.Process.Pid, ls, f.m.nsOrder)
	}
}

// TestNamespaceOpenFails: a namespace that cannot be opened for a reason
// other than its process being gone (here EMFILE, for real: the test
// process's RLIMIT_NOFILE is lowered to its lowest free fd around the
// sync, and restored) is counted in netns_errors at each attempt and
// logged at Warn once a minute per reason, not once per namespace and
// snapshot; once fds are available again it is opened.
func TestNamespaceOpenFails(t *testing.T) {
	needRoot(t)
	h := startNSHelper(t, 0)
	f := newFixture(t, nil)
	var logs bytes.Buffer
	f.m.log = hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Warn, JSONFormat: true})
	warns := func() []string {
		var w []string
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "cannot open a network namespace") {
				w = append(w, l)
			}
		}
		return w
	}
	f.m.res.list()
	if f.m.res.netns[h.netns] == nil {
		t.Fatalf("namespace %d not listed", h.netns)
	}
	errs := f.em.Counter(CounterNetNSErrors)
	outOfFDs := func() {
		t.Helper()
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
		free, err := unix.Dup(0) // the lowest free fd
		if err != nil {
			t.Fatal(err)
		}
		_ = unix.Close(free)
		low := lim
		low.Cur = uint64(free)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
			t.Fatal(err)
		}
		f.m.syncNetNS()
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
	}

	outOfFDs()
	n1 := errs.Load()
	if n1 < 1 || f.m.nss[h.netns] != nil {
		t.Fatalf("out of fds: netns_errors = %d, namespace %d open: %v", n1, h.netns, f.m.nss[h.netns] != nil)
	}
	if w := warns(); len(w) != 1 || !strings.Contains(w[0], `"reason":"EMFILE"`) || !strings.Contains(w[0], `"@level":"warn"`) {
		t.Fatalf("want one warning with reason EMFILE, got %q", w)
	}
	// Again within the minute: counted, not logged.
	f.clock.Advance(30 * time.Second)
	outOfFDs()
	if n2 := errs.Load(); n2 < n1+1 {
		t.Fatalf("second failure not counted: netns_errors %d then %d", n1, n2)
	}
	if w := warns(); len(w) != 1 {
		t.Fatalf("logged again within a minute: %q", w)
	}
	// A minute after the first: logged again, with the failures not logged.
	f.clock.Advance(30 * time.Second)
	outOfFDs()
	if w := warns(); len(w) != 2 || strings.Contains(w[1], `"not_logged_since_last":0`) {
		t.Fatalf("want a second warning saying failures were not logged, got %q", w)
	}
	// Fds again: opened, not counted.
	n3 := errs.Load()
	f.m.syncNetNS()
	if n := f.m.nss[h.netns]; n == nil || n.fd < 0 || n.d == nil {
		t.Fatalf("namespace %d not opened once fds were available: %+v", h.netns, n)
	}
	if got := errs.Load() - n3; got != 0 {
		t.Fatalf("netns_errors went up by %d with fds available", got)
	}
}
