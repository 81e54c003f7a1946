package netmon

import (
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/sdktest"
)

// These tests make real sockets on loopback and read them back through
// real sock_diag dumps and a real /proc walk. They need CAP_NET_ADMIN only
// for nothing: sock_diag dumps and /proc/self/fd are readable by the
// process itself, so they run unprivileged as well as root.

type fixture struct {
	t     *testing.T
	clock *sdktest.FakeClock
	em    *recorder
	m     *monitor
	exe   string
}

func newFixture(t *testing.T, mutate func(*Config)) *fixture {
	t.Helper()
	cfg := DefaultConfig()
	cfg.LearningPeriod = sdk.Duration(time.Minute)
	// Other processes on a shared machine may hold many fds; the tests
	// check attribution, not the budget (TestBudget does), so lift it.
	cfg.SnapshotBudget = sdk.Duration(time.Minute)
	cfg.AttributionFDs = 10_000_000
	if mutate != nil {
		mutate(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, clock: sdktest.NewFakeClock(time.Unix(1_700_000_000, 0)), em: newRecorder()}
	m, err := newMonitor(cfg, nil, f.clock, f.em)
	if err != nil {
		t.Fatal(err)
	}
	if m.dump == nil {
		t.Fatal("sock_diag unavailable: these tests need NETLINK_SOCK_DIAG (inet_diag, tcp_diag, udp_diag)")
	}
	t.Cleanup(m.Close)
	f.m = m
	if f.exe, err = os.Executable(); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) snap() []recorded {
	f.t.Helper()
	st, err := f.m.snapshot()
	if err != nil {
		f.t.Fatalf("snapshot: %v", err)
	}
	if st.Truncated {
		f.t.Fatalf("snapshot truncated: %+v", st)
	}
	return f.em.take()
}

func listen(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return l
}

func dial(t *testing.T, network, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func portOf(a net.Addr) int64 {
	switch a := a.(type) {
	case *net.TCPAddr:
		return int64(a.Port)
	case *net.UDPAddr:
		return int64(a.Port)
	}
	return 0
}

func find(evs []recorded, typ string, match func(recorded) bool) []recorded {
	var out []recorded
	for _, e := range evs {
		if e.Type == typ && (match == nil || match(e)) {
			out = append(out, e)
		}
	}
	return out
}

// ours keeps the events about this process's sockets: attributed to us,
// or unattributed (pid 0) on one of ports (local or remote).
func ours(evs []recorded, ports ...int64) []recorded {
	var out []recorded
	for _, e := range evs {
		if pid := e.num("pid"); pid == int64(os.Getpid()) ||
			pid == 0 && (slices.Contains(ports, e.num("local_port")) || slices.Contains(ports, e.num("remote_port"))) {
			out = append(out, e)
		}
	}
	return out
}

func onPort(p int64) func(recorded) bool {
	return func(e recorded) bool { return e.num("local_port") == p }
}

func toRemote(addr string, p int64) func(recorded) bool {
	return func(e recorded) bool { return e.str("remote_addr") == addr && e.num("remote_port") == p }
}

func TestListenersAndOutbound(t *testing.T) {
	for _, tc := range []struct {
		name, network, host string
	}{
		{name: "ipv4", network: "tcp4", host: "127.0.0.1"},
		{name: "ipv6", network: "tcp6", host: "::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			known := listen(t, tc.network, net.JoinHostPort(tc.host, "0"))
			evs := f.snap()
			first := find(evs, TypeListenerNew, onPort(portOf(known.Addr())))
			if len(first) != 1 || first[0].num("pid") != int64(os.Getpid()) || first[0].str("exe") != f.exe || !first[0].Fields["initial"].(bool) {
				t.Fatalf("first snapshot: want one initial listener_new on %v by pid %d (%s), got %v", known.Addr(), os.Getpid(), f.exe, first)
			}
			if a := find(evs, RuleListenerUnexpected, nil); len(a) != 0 {
				t.Fatalf("alerts during learning: %v", a)
			}
			f.clock.Advance(2 * time.Minute) // learning is over

			fresh := listen(t, tc.network, net.JoinHostPort(tc.host, "0"))
			const n = 3
			for range n {
				dial(t, tc.network, fresh.Addr().String())
			}
			time.Sleep(50 * time.Millisecond) // let the accept loop take them
			evs = f.snap()
			port := portOf(fresh.Addr())
			ln := find(evs, TypeListenerNew, onPort(port))
			if len(ln) != 1 || ln[0].num("pid") != int64(os.Getpid()) || ln[0].str("exe") != f.exe || ln[0].str("local_addr") != tc.host {
				t.Fatalf("want listener_new on %s:%d by us, got %v", tc.host, port, ln)
			}
			al := find(evs, RuleListenerUnexpected, onPort(port))
			if len(al) != 1 || !al[0].Alert || al[0].Severity != sdk.SevWarning || al[0].str("reason") != "port" {
				t.Fatalf("want one %s warning with reason port, got %v", RuleListenerUnexpected, al)
			}
			conn := find(evs, TypeConnectionNew, toRemote(tc.host, port))
			if len(conn) != 1 || conn[0].num("count") != n || conn[0].num("pid") != int64(os.Getpid()) || conn[0].str("exe") != f.exe {
				t.Fatalf("want one connection_new to %s:%d counting %d by us, got %v", tc.host, port, n, conn)
			}
			// The accepted (inbound) ends are not outbound connections.
			if in := find(evs, TypeConnectionNew, func(e recorded) bool { return e.num("local_port") == port }); len(in) != 0 {
				t.Fatalf("accepted connections reported as outbound: %v", in)
			}

			// Nothing changed: nothing reported. (Other processes on a
			// shared machine may open listeners meanwhile: only ours count.)
			if evs := ours(f.snap(), port, portOf(known.Addr())); len(evs) != 0 {
				t.Fatalf("unchanged sockets reported: %v", evs)
			}

			fresh.Close()
			evs = f.snap()
			if cl := find(evs, TypeListenerClosed, onPort(port)); len(cl) != 1 || cl[0].num("pid") != int64(os.Getpid()) {
				t.Fatalf("want listener_closed on port %d, got %v", port, evs)
			}
			// A new listener by a known executable on a known port does
			// not alert.
			known.Close()
			f.snap()
			again := listen(t, tc.network, known.Addr().String())
			evs = f.snap()
			if ln := find(evs, TypeListenerNew, onPort(portOf(again.Addr()))); len(ln) != 1 {
				t.Fatalf("want listener_new for the reopened listener, got %v", evs)
			}
			if a := ours(find(evs, RuleListenerUnexpected, nil), portOf(again.Addr())); len(a) != 0 {
				t.Fatalf("baseline listener alerted: %v", a)
			}
		})
	}
}

func TestUDP(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.LearningPeriod = 0 })
	f.snap()
	srv, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	port := portOf(srv.LocalAddr())
	cl := dial(t, "udp6", srv.LocalAddr().String())
	evs := f.snap()
	inEph := port >= int64(f.m.ephLo) && port <= int64(f.m.ephHi)
	ln := find(evs, TypeListenerNew, onPort(port))
	if inEph && len(ln) != 0 {
		t.Fatalf("UDP socket on ephemeral port %d reported as a listener: %v", port, ln)
	}
	conn := find(evs, TypeConnectionNew, toRemote("::1", port))
	if len(conn) != 1 || conn[0].str("proto") != "udp" || conn[0].num("local_port") != portOf(cl.LocalAddr()) || conn[0].num("pid") != int64(os.Getpid()) {
		t.Fatalf("want a udp connection_new to [::1]:%d, got %v", port, evs)
	}
	// A UDP server on a port below the ephemeral range is a listener.
	var fixed net.PacketConn
	for p := 20000; p < 20100 && fixed == nil; p++ {
		fixed, _ = net.ListenPacket("udp4", "127.0.0.1:"+strconv.Itoa(p))
	}
	if fixed == nil {
		t.Fatal("no free UDP port in 20000-20099")
	}
	defer fixed.Close()
	evs = f.snap()
	ln = find(evs, TypeListenerNew, onPort(portOf(fixed.LocalAddr())))
	if len(ln) != 1 || ln[0].str("proto") != "udp" || ln[0].num("pid") != int64(os.Getpid()) {
		t.Fatalf("want a udp listener_new on %v, got %v", fixed.LocalAddr(), evs)
	}
	if a := find(evs, RuleListenerUnexpected, onPort(portOf(fixed.LocalAddr()))); len(a) != 1 {
		t.Fatalf("want an unexpected-listener alert after learning, got %v", evs)
	}
}

func TestBlocklist(t *testing.T) {
	for _, tc := range []struct {
		name, network, host, block string
	}{
		{name: "ipv4", network: "tcp4", host: "127.0.0.2", block: "127.0.0.2/32"},
		{name: "ipv6", network: "tcp6", host: "::1", block: "::1/128"},
		{name: "ipv4 listener, v6 blocklist does not match", network: "tcp4", host: "127.0.0.3", block: "::1/128"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(c *Config) { c.Blocklist = []string{tc.block} })
			l := listen(t, tc.network, net.JoinHostPort(tc.host, "0"))
			f.snap()
			dial(t, tc.network, l.Addr().String())
			dial(t, tc.network, l.Addr().String())
			evs := f.snap()
			port := portOf(l.Addr())
			al := find(evs, RuleOutboundBlocklisted, toRemote(tc.host, port))
			wantAlert := tc.name != "ipv4 listener, v6 blocklist does not match"
			if !wantAlert {
				if len(al) != 0 {
					t.Fatalf("unexpected blocklist alert: %v", al)
				}
				return
			}
			if len(al) != 1 || al[0].Severity != sdk.SevCritical || !al[0].Alert || al[0].num("count") != 2 ||
				al[0].num("pid") != int64(os.Getpid()) || al[0].str("rule") != RuleOutboundBlocklisted {
				t.Fatalf("want one critical %s for 2 connections by us, got %v", RuleOutboundBlocklisted, evs)
			}
		})
	}
}

func TestShellHoldingSocket(t *testing.T) {
	f := newFixture(t, nil)
	l := listen(t, "tcp4", "127.0.0.1:0")
	f.snap()
	c := dial(t, "tcp4", l.Addr().String())
	file, err := c.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	// A reverse shell: sh reading its commands from a TCP socket.
	sh := exec.Command("/bin/sh", "-c", "read line")
	sh.Stdin = file
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sh.Process.Kill()
		_ = sh.Wait()
	})
	// Until sh has exec'd (a loaded box may take a while); the deadline
	// only bounds a failure.
	var al []recorded
	for deadline := time.Now().Add(30 * time.Second); len(al) == 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		al = find(f.snap(), RuleShellSocket, nil)
	}
	if len(al) != 1 || al[0].num("pid") != int64(sh.Process.Pid) || al[0].str("comm") != "sh" || al[0].Severity != sdk.SevCritical {
		t.Fatalf("want one %s alert for sh (pid %d), got %v", RuleShellSocket, sh.Process.Pid, al)
	}
	if evs := f.snap(); len(find(evs, RuleShellSocket, nil)) != 0 {
		t.Fatalf("shell alert repeated: %v", evs)
	}
}

func TestBudgetTruncatesAndSlowsDown(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.SnapshotBudget = sdk.Duration(10 * time.Millisecond)
		c.CPUPercent = 0.1
	})
	// Enough sockets that the dump spans several datagrams.
	l := listen(t, "tcp4", "127.0.0.1:0")
	for range 400 {
		dial(t, "tcp4", l.Addr().String())
	}
	f.m.cfg.SnapshotBudget = 0 // spent before it starts
	st, err := f.m.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if !st.Truncated {
		t.Fatalf("snapshot with no budget was not truncated: %+v", st)
	}
	wait := f.m.pace(st)
	if wait <= f.m.cfg.Interval.D() {
		t.Fatalf("interval not stretched after a snapshot over budget: %v", wait)
	}
	status := find(f.em.take(), TypeStatus, nil)
	if len(status) != 1 || status[0].str("mode") != string(ModeTruncated) {
		t.Fatalf("want one truncated status event, got %v", status)
	}
	if f.em.Counter(CounterTruncated).Load() != 1 {
		t.Fatalf("%s = %d, want 1", CounterTruncated, f.em.Counter(CounterTruncated).Load())
	}
	// With its budget back, the next snapshot completes and the mode
	// returns to normal.
	f.m.cfg.SnapshotBudget = sdk.Duration(time.Minute)
	f.m.cfg.CPUPercent = 100
	st = f.m.snapshot2(t)
	f.m.pace(st)
	status = find(f.em.take(), TypeStatus, nil)
	if len(status) != 1 || status[0].str("mode") != string(ModeNormal) {
		t.Fatalf("want a normal status event, got %v", status)
	}
}

func (m *monitor) snapshot2(t *testing.T) Stats {
	t.Helper()
	st, err := m.snapshot()
	if err != nil || st.Truncated {
		t.Fatalf("snapshot: %+v %v", st, err)
	}
	return st
}
