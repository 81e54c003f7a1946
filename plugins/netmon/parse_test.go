package netmon

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "capture new parser fixtures from this machine into testdata")

// format writes one socket as a golden line.
func format(s *Socket) string {
	return fmt.Sprintf("%s %s state=%d %s -> %s inode=%d uid=%d", s.ProtoName(), s.FamilyName(), s.State,
		net.JoinHostPort(s.LocalAddr().String(), fmt.Sprint(s.LocalPort)),
		net.JoinHostPort(s.RemoteAddr().String(), fmt.Sprint(s.RemotePort)), s.Inode, s.UID)
}

var diagFixtures = []struct {
	name          string
	family, proto uint8
}{
	{name: "tcp4", family: afInet, proto: protoTCP},
	{name: "tcp6", family: afInet6, proto: protoTCP},
	{name: "udp4", family: afInet, proto: protoUDP},
	{name: "udp6", family: afInet6, proto: protoUDP},
	// TCPDIAG_GETSOCK: IPv4 and IPv6 in one dump, replies of type 18.
	{name: "tcp", family: afUnspec, proto: protoTCP},
}

// openFixtureSockets opens listeners and connections of every kind, so a
// captured dump shows each.
func openFixtureSockets(t *testing.T) {
	for _, n := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
		l := listen(t, n.network, n.addr)
		dial(t, n.network, l.Addr().String())
	}
	for _, n := range []struct{ network, addr string }{{"udp4", "127.0.0.1:0"}, {"udp6", "[::1]:0"}} {
		pc, err := net.ListenPacket(n.network, n.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		dial(t, n.network, pc.LocalAddr().String())
	}
}

func TestParseDiagFixtures(t *testing.T) {
	if *update {
		openFixtureSockets(t)
		d, err := newDumper(0)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		for _, fx := range diagFixtures {
			var raw bytes.Buffer
			d.tap = func(b []byte) { raw.Write(b) }
			var s Socket
			if _, err := d.dump(fx.family, fx.proto, allStates, &s, func(*Socket) {}, nil); err != nil {
				t.Fatal(err)
			}
			writeFixture(t, "diag_"+fx.name+".bin", raw.Bytes())
		}
	}
	for _, fx := range diagFixtures {
		t.Run(fx.name, func(t *testing.T) {
			raw := readFixture(t, "diag_"+fx.name+".bin")
			var got strings.Builder
			var s Socket
			r, err := parseDiag(raw, fx.proto, &s, func(s *Socket) { got.WriteString(format(s) + "\n") })
			if err != nil {
				t.Fatal(err)
			}
			if !r.done {
				t.Fatal("fixture dump has no NLMSG_DONE")
			}
			golden(t, "diag_"+fx.name+".golden", got.String())
		})
	}
}

func TestParseDiagErrors(t *testing.T) {
	raw := readFixture(t, "diag_tcp4.bin")
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{name: "cut in a message", b: raw[:len(raw)-30], want: ErrShortMessage},
		{name: "length below header", b: []byte{4, 0, 0, 0, 20, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0}, want: ErrShortMessage},
		{name: "short inet_diag_msg", b: append([]byte{20, 0, 0, 0, 20, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 2, 0, 0, 0), want: ErrShortMessage},
		{name: "bad family", b: badFamily(raw), want: ErrBadFamily},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s Socket
			_, err := parseDiag(tc.b, protoTCP, &s, func(*Socket) {})
			if err == nil || !strings.Contains(err.Error(), tc.want.Error()) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("netlink error", func(t *testing.T) {
		b := []byte{20, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff} // -EPERM
		var s Socket
		if _, err := parseDiag(b, protoTCP, &s, func(*Socket) {}); err == nil || !strings.Contains(err.Error(), "operation not permitted") {
			t.Fatalf("got %v, want EPERM", err)
		}
	})
}

func badFamily(raw []byte) []byte {
	b := bytes.Clone(raw)
	b[nlmsgHdrLen] = 99
	return b
}

func TestParseDiagAllocs(t *testing.T) {
	raw := readFixture(t, "diag_tcp4.bin")
	var s Socket
	n := 0
	fn := func(*Socket) { n++ }
	if a := testing.AllocsPerRun(100, func() { _, _ = parseDiag(raw, protoTCP, &s, fn) }); a != 0 {
		t.Fatalf("parseDiag allocates %v times per dump", a)
	}
}

func FuzzParseDiag(f *testing.F) {
	for _, fx := range diagFixtures {
		f.Add(readFixture(f, "diag_"+fx.name+".bin"))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		newInodeSet().warm(b) // reads the same bytes ahead of the parser: must not panic
		var s Socket
		n := 0
		r, err := parseDiag(b, protoTCP, &s, func(s *Socket) {
			n++
			if s.Family != afInet && s.Family != afInet6 {
				t.Fatalf("socket with family %d", s.Family)
			}
		})
		if r.sockets != n {
			t.Fatalf("result counts %d sockets, callback saw %d", r.sockets, n)
		}
		_ = err
	})
}

var procNetFixtures = []struct {
	name          string
	family, proto uint8
}{
	{name: "tcp", family: afInet, proto: protoTCP},
	{name: "tcp6", family: afInet6, proto: protoTCP},
	{name: "udp", family: afInet, proto: protoUDP},
	{name: "udp6", family: afInet6, proto: protoUDP},
}

func TestParseProcNetFixtures(t *testing.T) {
	if *update {
		openFixtureSockets(t)
		for _, fx := range procNetFixtures {
			b, err := os.ReadFile("/proc/net/" + fx.name)
			if err != nil {
				t.Fatal(err)
			}
			writeFixture(t, "proc_net_"+fx.name, b)
		}
	}
	for _, fx := range procNetFixtures {
		t.Run(fx.name, func(t *testing.T) {
			var got strings.Builder
			var s Socket
			_, err := parseProcNet(bytes.NewReader(readFixture(t, "proc_net_"+fx.name)), fx.family, fx.proto, &s,
				func(s *Socket) { got.WriteString(format(s) + "\n") })
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "proc_net_"+fx.name+".golden", got.String())
		})
	}
}

// TestProcNetMatchesDiag reads the same live sockets both ways: the
// test's own (other processes on a shared machine open and close sockets
// between the two reads).
func TestProcNetMatchesDiag(t *testing.T) {
	openFixtureSockets(t)
	mine := ownSocketInodes(t)
	d, err := newDumper(0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, fx := range procNetFixtures {
		t.Run(fx.name, func(t *testing.T) {
			fromDiag := map[string]bool{}
			var s Socket
			if _, err := d.dump(fx.family, fx.proto, allStates, &s, func(s *Socket) { fromDiag[format(s)] = true }, nil); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open("/proc/net/" + fx.name)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var missing []string
			if _, err := parseProcNet(f, fx.family, fx.proto, &s, func(s *Socket) {
				if s.Inode != 0 && mine[s.Inode] && !fromDiag[format(s)] {
					missing = append(missing, format(s))
				}
			}); err != nil {
				t.Fatal(err)
			}
			if len(missing) > 0 {
				t.Fatalf("sockets in /proc/net/%s but not in the sock_diag dump:\n%s", fx.name, strings.Join(missing, "\n"))
			}
		})
	}
}

// ownSocketInodes returns the inodes of this process's sockets.
func ownSocketInodes(t *testing.T) map[uint32]bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint32]bool{}
	for _, e := range ents {
		l, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the directory's own fd, closed by now
		}
		var ino uint32
		if _, err := fmt.Sscanf(l, "socket:[%d]", &ino); err == nil {
			out[ino] = true
		}
	}
	if len(out) == 0 {
		t.Fatal("no sockets in /proc/self/fd")
	}
	return out
}

func FuzzParseProcNet(f *testing.F) {
	for _, fx := range procNetFixtures {
		f.Add(readFixture(f, "proc_net_"+fx.name), fx.name == "tcp6" || fx.name == "udp6")
	}
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		fam := uint8(afInet)
		if v6 {
			fam = afInet6
		}
		var s Socket
		n := 0
		got, _ := parseProcNet(bytes.NewReader(b), fam, protoTCP, &s, func(*Socket) { n++ })
		if got != n {
			t.Fatalf("parser counted %d sockets, callback saw %d", got, n)
		}
	})
}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatalf("reading fixture (capture with go test -run Fixtures -update): %v", err)
	}
	return b
}

func writeFixture(t *testing.T, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join("testdata", name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// golden compares got with testdata/name, or rewrites it under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	if *update {
		writeFixture(t, name, []byte(got))
		return
	}
	want := string(readFixture(t, name))
	if got != want {
		t.Fatalf("parsed %s differs from %s:\ngot:\n%s\nwant:\n%s", name, name, got, want)
	}
}

// TestDumpStateMask checks the kernel honours the state mask: with
// TIME_WAIT left out, a socket just closed first does not appear.
func TestDumpStateMask(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	client := uint16(c.LocalAddr().(*net.TCPAddr).Port)
	srv.Close() // the server closes first: its end goes to TIME_WAIT
	c.Close()
	d, err := newDumper(0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	stateOf := func(mask uint32) (state uint8) {
		var s Socket
		if _, err := d.dump(afInet, protoTCP, mask, &s, func(s *Socket) {
			if s.LocalPort == uint16(portOf(l.Addr())) && s.RemotePort == client {
				state = s.State
			}
		}, nil); err != nil {
			t.Fatal(err)
		}
		return state
	}
	var st uint8
	for i := 0; i < 100 && st != stateTimeWait; i++ {
		st = stateOf(tcpConnMask)
		time.Sleep(10 * time.Millisecond)
	}
	if st != stateTimeWait {
		t.Fatalf("server end in state %d, want TIME_WAIT", st)
	}
	if st := stateOf(tcpConnMask &^ tcpNoProcessMask); st != 0 {
		t.Fatalf("TIME_WAIT socket dumped (state %d) with TIME_WAIT masked out", st)
	}
}
