package netmon

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// dumpBufSize holds the largest datagram the kernel builds for a dump (it
// caps them at 32 KiB) with room to spare.
const dumpBufSize = 64 << 10

// ErrBudget ends a dump that used up its CPU budget.
var ErrBudget = errors.New("netmon: snapshot cpu budget exhausted")

func errnoErr(errno int32) error { return unix.Errno(errno) }

// dumper runs sock_diag dumps over one NETLINK_SOCK_DIAG socket. Requests
// go out through mdlayher/netlink; replies are read straight into one
// reused buffer and parsed in place, so a dump of any size allocates
// nothing per socket or per datagram.
type dumper struct {
	conn *netlink.Conn
	rc   syscall.RawConn
	buf  []byte
	req  []byte
	// readFn is built once so the raw read does not allocate a closure.
	readFn  func(fd uintptr) bool
	writeFn func(fd uintptr) bool
	n       int
	rerr    error
	werr    error
	seq     uint32
	// Timeout bounds one dump.
	Timeout time.Duration
	// tap, when set, sees every datagram before it is parsed (tests use it
	// to capture fixtures).
	tap func([]byte)
	// warm, when set, sees every datagram before it is parsed, so the
	// caller can touch what parsing it will need (see inodeSet.warm).
	warm func([]byte)
	// refuseCompat, for tests, answers a TCPDIAG_GETSOCK dump as a kernel
	// without it would.
	refuseCompat bool
	// nsFD, when not 0, is an open /proc/PID/ns/net: the socket is
	// created inside that network namespace (and made again there after
	// an error). The fd belongs to the caller.
	nsFD int
}

// newDumper opens a sock_diag socket in the calling thread's network
// namespace (nsFD 0) or in the namespace nsFD refers to.
//
// mdlayher/netlink (Config.NetNS, through mdlayher/socket) creates the
// socket on a goroutine locked to its thread: setns(nsFD, CLONE_NEWNET),
// socket(2), setns back; if returning fails the thread is left locked so
// the Go runtime ends it instead of reusing it in the wrong namespace. A
// netlink socket stays in the namespace it was created in, so it is then
// used from any goroutine.
func newDumper(nsFD int) (*dumper, error) { return newDumperBuf(nsFD, nil) }

// newDumperBuf is newDumper reading into buf (dumpBufSize bytes) when it
// is not nil: dumpers used one after the other share one buffer.
func newDumperBuf(nsFD int, buf []byte) (*dumper, error) {
	if buf == nil {
		buf = make([]byte, dumpBufSize)
	}
	d := &dumper{buf: buf, req: make([]byte, nlmsgHdrLen, nlmsgHdrLen+inetDiagReqLen), Timeout: 30 * time.Second, nsFD: nsFD}
	d.readFn = func(fd uintptr) bool {
		d.n, d.rerr = unix.Read(int(fd), d.buf)
		return d.rerr != unix.EAGAIN
	}
	d.writeFn = func(fd uintptr) bool {
		_, d.werr = unix.Write(int(fd), d.req)
		return d.werr != unix.EAGAIN
	}
	if err := d.dial(); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *dumper) dial() error {
	var cfg *netlink.Config
	if d.nsFD > 0 {
		cfg = &netlink.Config{NetNS: d.nsFD}
	}
	c, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, cfg)
	if err != nil {
		return fmt.Errorf("dialing netlink sock_diag: %w", err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		_ = c.Close()
		return fmt.Errorf("netlink sock_diag raw conn: %w", err)
	}
	d.conn, d.rc = c, rc
	return nil
}

// Close closes the netlink socket.
func (d *dumper) Close() error {
	if d.conn == nil {
		return nil
	}
	err := d.conn.Close()
	d.conn = nil
	return err
}

// dump asks the kernel for every socket of family and proto in states and
// calls fn for each. over is polled after every datagram; when it reports
// true the dump is abandoned (the socket is closed so the kernel stops
// walking its tables) and ErrBudget is returned with what was seen so far.
func (d *dumper) dump(family, proto uint8, states uint32, s *Socket, fn func(*Socket), over func() bool) (dumpResult, error) {
	var total dumpResult
	if d.conn == nil {
		if err := d.dial(); err != nil {
			return total, err
		}
	}
	typ := netlink.HeaderType(sockDiagByFamily)
	if family == afUnspec {
		if proto != protoTCP {
			return total, fmt.Errorf("netmon: a dump of both families is for TCP only (protocol %d)", proto)
		}
		if d.refuseCompat {
			return total, fmt.Errorf("%w: %w", ErrDumpRefused, unix.EINVAL)
		}
		typ = tcpDiagGetSock
		d.req = appendCompatRequest(d.req[:nlmsgHdrLen], states)
	} else {
		d.req = appendDiagRequest(d.req[:nlmsgHdrLen], family, proto, states)
	}
	// The request is written through the raw conn, as replies are read:
	// netlink.Conn.Send starts a goroutine per call to watch its context,
	// whose wake-up cost more than the write itself (it showed in profiles
	// of snapshots of many namespaces, several small dumps each).
	d.seq++
	binary.NativeEndian.PutUint32(d.req[0:4], uint32(len(d.req)))
	binary.NativeEndian.PutUint16(d.req[4:6], uint16(typ))
	binary.NativeEndian.PutUint16(d.req[6:8], uint16(netlink.Request|netlink.Dump))
	binary.NativeEndian.PutUint32(d.req[8:12], d.seq)
	binary.NativeEndian.PutUint32(d.req[12:16], 0)
	if err := d.rc.Write(d.writeFn); err != nil || d.werr != nil {
		_ = d.Close()
		return total, fmt.Errorf("sending sock_diag request: %w", errors.Join(err, d.werr))
	}
	if err := d.conn.SetReadDeadline(time.Now().Add(d.Timeout)); err != nil {
		_ = d.Close()
		return total, fmt.Errorf("setting netlink deadline: %w", err)
	}
	for {
		if err := d.rc.Read(d.readFn); err != nil {
			_ = d.Close()
			return total, fmt.Errorf("reading sock_diag reply: %w", err)
		}
		if d.rerr != nil {
			_ = d.Close()
			return total, fmt.Errorf("reading sock_diag reply: %w", d.rerr)
		}
		if d.tap != nil {
			d.tap(d.buf[:d.n])
		}
		if d.warm != nil {
			d.warm(d.buf[:d.n])
		}
		r, err := parseDiag(d.buf[:d.n], proto, s, fn)
		total.sockets += r.sockets
		total.interrupted = total.interrupted || r.interrupted
		if err != nil {
			_ = d.Close()
			return total, err
		}
		if r.done {
			total.done = true
			return total, nil
		}
		if over != nil && over() {
			_ = d.Close()
			return total, ErrBudget
		}
	}
}
