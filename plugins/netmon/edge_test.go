package netmon

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Edge cases of the list not covered elsewhere: the telemetry cap
// (alerts are not capped), the listener alert's reasons, counted
// attribution misses, IPv4-mapped IPv6 peers against an IPv4 blocklist,
// the bound on itemised outbound connections, and NLM_F_DUMP_INTR.

func TestTelemetryCappedAlertsNot(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.MaxEventsPerSnapshot = 2
		c.Blocklist = []string{"127.0.0.5/32"}
	})
	f.snap()
	for range 4 {
		l := listen(t, "tcp4", "127.0.0.1:0")
		dial(t, "tcp4", l.Addr().String())
	}
	bl := listen(t, "tcp4", "127.0.0.5:0")
	dial(t, "tcp4", bl.Addr().String())
	evs := f.snap()
	telemetry := 0
	for _, e := range evs {
		if !e.Alert {
			telemetry++
		}
	}
	if telemetry > 2 {
		t.Fatalf("%d telemetry events with max_events_per_snapshot 2: %v", telemetry, evs)
	}
	// 5 new listeners and 5 new connections of ours, 2 let through.
	if n := f.em.Counter(CounterEventsSuppressed).Load(); n < 8 {
		t.Fatalf("%s = %d, want at least 8", CounterEventsSuppressed, n)
	}
	if al := find(evs, RuleOutboundBlocklisted, toRemote("127.0.0.5", portOf(bl.Addr()))); len(al) != 1 || al[0].num("pid") != int64(os.Getpid()) {
		t.Fatalf("want the blocklist alert despite the cap, got %v", evs)
	}
}

func TestListenerAlertReasons(t *testing.T) {
	onKnownPort := listen(t, "tcp4", "127.0.0.1:0")
	onNewPort := listen(t, "tcp6", "[::1]:0")
	f := newFixture(t, func(c *Config) {
		c.LearningPeriod = 0
		c.BaselinePorts = []int{int(portOf(onKnownPort.Addr()))}
		c.BaselineExes = []string{"/usr/sbin/vigil-no-such-daemon"}
	})
	evs := f.snap()
	for _, tc := range []struct {
		l    net.Listener
		want string
	}{{onKnownPort, "exe"}, {onNewPort, "port,exe"}} {
		al := find(evs, RuleListenerUnexpected, onPort(portOf(tc.l.Addr())))
		if len(al) != 1 || al[0].str("reason") != tc.want || al[0].str("exe") != f.exe {
			t.Fatalf("listener %v: want one alert with reason %q and exe %s, got %v", tc.l.Addr(), tc.want, f.exe, al)
		}
	}
	// With our executable in the baseline, a listener on a known port is
	// quiet and one on a new port alerts for the port only.
	f.m.baselineExes[f.exe] = true
	f.m.baselinePorts[protoTCP<<16|uint32(portOf(onNewPort.Addr()))] = true
	onKnownPort.Close()
	f.snap()
	again := listen(t, "tcp4", onKnownPort.Addr().String())
	fresh := listen(t, "tcp4", "127.0.0.1:0")
	evs = f.snap()
	if al := find(evs, RuleListenerUnexpected, onPort(portOf(again.Addr()))); len(al) != 0 {
		t.Fatalf("baseline port and exe alerted: %v", al)
	}
	if al := find(evs, RuleListenerUnexpected, onPort(portOf(fresh.Addr()))); len(al) != 1 || al[0].str("reason") != "port" {
		t.Fatalf("want reason port for %v, got %v", fresh.Addr(), al)
	}
}

// TestAttributionMissCounted: with an fd budget too small to reach the
// new socket, the connection is still reported, with pid 0, and counted.
func TestAttributionMissCounted(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.AttributionFDs = 1 })
	l := listen(t, "tcp4", "127.0.0.1:0")
	f.snap()
	dial(t, "tcp4", l.Addr().String())
	evs := f.snap()
	c := find(evs, TypeConnectionNew, toRemote("127.0.0.1", portOf(l.Addr())))
	if len(c) != 1 || c[0].num("pid") != 0 || c[0].str("exe") != "" {
		t.Fatalf("want one unattributed connection_new, got %v", c)
	}
	if n := f.em.Counter(CounterAttributionMisses).Load(); n < 1 {
		t.Fatalf("%s = %d, want at least 1", CounterAttributionMisses, n)
	}
	if n := f.em.Counter(CounterAttributionDefer).Load(); n < 1 {
		t.Fatalf("%s = %d, want at least 1", CounterAttributionDefer, n)
	}
}

// TestBlocklistMappedPeer: an IPv6 socket connected to an IPv4-mapped
// address matches an IPv4 blocklist entry.
func TestBlocklistMappedPeer(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Blocklist = []string{"127.0.0.6/32"} })
	l := listen(t, "tcp4", "127.0.0.6:0")
	f.snap()
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrInet6{Port: int(portOf(l.Addr())), Addr: [16]byte{10: 0xff, 11: 0xff, 12: 127, 15: 6}}
	if err := unix.Connect(fd, to); err != nil {
		t.Fatalf("connecting to [::ffff:127.0.0.6]:%d: %v", to.Port, err)
	}
	evs := f.snap()
	al := find(evs, RuleOutboundBlocklisted, toRemote("::ffff:127.0.0.6", portOf(l.Addr())))
	if len(al) != 1 || al[0].str("family") != "ipv6" || al[0].num("pid") != int64(os.Getpid()) {
		t.Fatalf("want one blocklist alert for the mapped peer, got %v", evs)
	}
}

// TestOutboundBeyondBound: new outbound connections beyond the bound of
// one snapshot are counted, not itemised; blocklisted ones still alert.
func TestOutboundBeyondBound(t *testing.T) {
	defer func(n int) { maxPending = n }(maxPending)
	maxPending = 2
	f := newFixture(t, func(c *Config) { c.Blocklist = []string{"127.0.0.7/32"} })
	var ports []int64
	for range 4 {
		l := listen(t, "tcp4", "127.0.0.1:0")
		ports = append(ports, portOf(l.Addr()))
	}
	bl := listen(t, "tcp4", "127.0.0.7:0")
	f.snap()
	for _, p := range ports {
		dial(t, "tcp4", net.JoinHostPort("127.0.0.1", strconv.FormatInt(p, 10)))
	}
	dial(t, "tcp4", bl.Addr().String())
	evs := f.snap()
	if n := f.em.Counter(CounterOutboundUnreported).Load(); n < 2 {
		t.Fatalf("%s = %d, want at least 2 of our 5 new connections beyond a bound of 2", CounterOutboundUnreported, n)
	}
	if al := find(evs, RuleOutboundBlocklisted, toRemote("127.0.0.7", portOf(bl.Addr()))); len(al) != 1 {
		t.Fatalf("want the blocklist alert beyond the bound, got %v", evs)
	}
	// The next snapshot does not report them again.
	time.Sleep(10 * time.Millisecond)
	if evs := ours(f.snap(), append(ports, portOf(bl.Addr()))...); len(evs) != 0 {
		t.Fatalf("connections reported again: %v", evs)
	}
}

// TestParseDumpInterrupted: a message flagged NLM_F_DUMP_INTR (the
// kernel's tables changed during the dump) is still parsed, and the dump
// says it was interrupted.
func TestParseDumpInterrupted(t *testing.T) {
	raw := readFixture(t, "diag_tcp4.bin")
	var s Socket
	clean, err := parseDiag(raw, protoTCP, &s, func(*Socket) {})
	if err != nil || clean.interrupted {
		t.Fatalf("fixture: %+v, %v", clean, err)
	}
	b := bytes.Clone(raw)
	binary.NativeEndian.PutUint16(b[6:8], binary.NativeEndian.Uint16(b[6:8])|nlmFDumpIntr)
	r, err := parseDiag(b, protoTCP, &s, func(*Socket) {})
	if err != nil || !r.interrupted || r.sockets != clean.sockets {
		t.Fatalf("flagged dump: %+v, %v; want interrupted with %d sockets", r, err, clean.sockets)
	}
}
