package netmon

import (
	"errors"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// ourSocket is one socket of the test, as both ends see it.
type ourSocket struct {
	family              uint8
	local, remote       uint16
	state               uint8
	listener, connected bool
}

// TestDumpBothFamilies checks the one-walk TCP dump (TCPDIAG_GETSOCK)
// returns exactly what the two per-family dumps return, IPv4 and IPv6
// sockets with their own families, for the test's own sockets.
func TestDumpBothFamilies(t *testing.T) {
	// Our sockets by family and port: another process may hold the same
	// port number in the other family (its port space is separate).
	type famPort struct {
		family uint8
		port   uint16
	}
	ports := map[famPort]bool{}
	for _, n := range []struct {
		network, addr string
		family        uint8
	}{{"tcp4", "127.0.0.1:0", afInet}, {"tcp6", "[::1]:0", afInet6}} {
		l, err := net.Listen(n.network, n.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports[famPort{n.family, uint16(portOf(l.Addr()))}] = true
		c := dial(t, n.network, l.Addr().String())
		ports[famPort{n.family, uint16(portOf(c.LocalAddr()))}] = true
		// Accepted here, so the server end is established before the
		// dumps (not a request socket turning into one between them).
		srv, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
	}
	d, err := newDumper(0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	collect := func(family uint8, states uint32, into map[ourSocket]int) int {
		var s Socket
		r, err := d.dump(family, protoTCP, states, &s, func(s *Socket) {
			if s.Proto != protoTCP {
				t.Fatalf("socket with protocol %d in a TCP dump", s.Proto)
			}
			// Ours: the listeners (no peer) and both ends of our
			// connections; not a stray time-wait socket on a reused port.
			if ports[famPort{s.Family, s.LocalPort}] && (s.RemotePort == 0 || ports[famPort{s.Family, s.RemotePort}]) {
				into[ourSocket{family: s.Family, local: s.LocalPort, remote: s.RemotePort, state: s.State}]++
			}
		}, nil)
		if err != nil {
			t.Fatalf("dump family %d: %v", family, err)
		}
		if !r.done {
			t.Fatalf("dump family %d did not end with NLMSG_DONE", family)
		}
		return r.sockets
	}
	for _, states := range []uint32{tcpListenMask, tcpConnMask} {
		both, per := map[ourSocket]int{}, map[ourSocket]int{}
		collect(afUnspec, states, both)
		collect(afInet, states, per)
		collect(afInet6, states, per)
		fams := map[uint8]int{}
		for k := range both {
			fams[k.family]++
		}
		want := 1 // one listener per family
		if states == tcpConnMask {
			want = 2 // both ends of one connection per family
		}
		if fams[afInet] != want || fams[afInet6] != want || len(both) != 2*want {
			t.Fatalf("states %#x: one-walk dump has %v of our sockets (%d v4, %d v6), want %d of each", states, both, fams[afInet], fams[afInet6], want)
		}
		for k, n := range both {
			if n != 1 || per[k] != 1 {
				t.Fatalf("states %#x: socket %+v seen %d times in the one-walk dump, %d in the per-family dumps", states, k, n, per[k])
			}
		}
		if len(per) != len(both) {
			t.Fatalf("states %#x: per-family dumps have %v, the one-walk dump %v", states, per, both)
		}
	}
}

// TestTCPPerFamilyFallback runs the monitor against a kernel that refuses
// the one-walk dump: it says so once, dumps per family from then on, and
// reports the same listeners and connections.
func TestTCPPerFamilyFallback(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.LearningPeriod = 0 })
	f.m.dump.refuseCompat = true
	f.snap()
	if !f.m.noCompat {
		t.Fatal("the monitor did not switch to per-family dumps after the kernel refused the one-walk dump")
	}
	for _, n := range []struct{ network, host string }{{"tcp4", "127.0.0.1"}, {"tcp6", "::1"}} {
		l := listen(t, n.network, net.JoinHostPort(n.host, "0"))
		dial(t, n.network, l.Addr().String())
		evs := f.snap()
		port := portOf(l.Addr())
		if ln := find(evs, TypeListenerNew, onPort(port)); len(ln) != 1 || ln[0].num("pid") != int64(os.Getpid()) {
			t.Fatalf("%s: want listener_new on port %d, got %v", n.network, port, evs)
		}
		if c := find(evs, TypeConnectionNew, toRemote(n.host, port)); len(c) != 1 || c[0].num("pid") != int64(os.Getpid()) {
			t.Fatalf("%s: want connection_new to %s:%d, got %v", n.network, n.host, port, evs)
		}
	}
}

// TestDumpRefusedError checks a netlink error is ErrDumpRefused with the
// kernel's errno, and a read error is not.
func TestDumpRefusedError(t *testing.T) {
	b := []byte{20, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xea, 0xff, 0xff, 0xff} // -EINVAL
	var s Socket
	_, err := parseDiag(b, protoTCP, &s, func(*Socket) {})
	if !errors.Is(err, ErrDumpRefused) || !errors.Is(err, unix.EINVAL) {
		t.Fatalf("got %v, want ErrDumpRefused wrapping EINVAL", err)
	}
	if _, err := parseDiag(b[:18], protoTCP, &s, func(*Socket) {}); errors.Is(err, ErrDumpRefused) {
		t.Fatalf("a truncated message reads as a refusal: %v", err)
	}
}

// TestBoundSocketNotDumped checks a TCP socket that is bound but neither
// listens nor connects is left out of the connection dump (the kernel
// dumps it only when asked for TCP_BOUND_INACTIVE, which walks its whole
// bind table), and the monitor reports nothing for it.
func TestBoundSocketNotDumped(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(sa.(*unix.SockaddrInet4).Port)
	d, err := newDumper(0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	found := func(family uint8, states uint32) bool {
		var s Socket
		hit := false
		if _, err := d.dump(family, protoTCP, states, &s, func(s *Socket) {
			hit = hit || s.LocalPort == port && s.Family == afInet
		}, nil); err != nil {
			t.Fatal(err)
		}
		return hit
	}
	if found(afUnspec, tcpConnMask) || found(afInet, tcpConnMask) || found(afUnspec, tcpListenMask) {
		t.Fatalf("bound, inactive socket on port %d dumped with the monitor's state masks", port)
	}
	if !found(afInet, 1<<13) {
		t.Logf("this kernel does not dump bound, inactive sockets (TCP_BOUND_INACTIVE is Linux >= 6.8)")
	}
	f := newFixture(t, func(c *Config) { c.LearningPeriod = 0 })
	f.snap()
	fd2, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd2)
	if err := unix.Bind(fd2, &unix.SockaddrInet6{Addr: [16]byte{15: 1}}); err != nil {
		t.Fatal(err)
	}
	sa2, err := unix.Getsockname(fd2)
	if err != nil {
		t.Fatal(err)
	}
	if evs := ours(f.snap(), int64(port), int64(sa2.(*unix.SockaddrInet6).Port)); len(evs) != 0 {
		t.Fatalf("bound, inactive sockets reported: %v", evs)
	}
}
