package cnproc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ErrClosed is returned by Read after Close.
var ErrClosed = errors.New("cnproc: connection closed")

// Conn is a subscribed process events socket.
type Conn struct {
	nl  *netlink.Conn
	raw syscall.RawConn

	// read state, reused by every Read so it does not allocate.
	buf     []byte
	n       int
	rerr    error
	pending error
	// recvmmsg state: one slot per datagram, gathered into buf.
	slots   []byte
	iovs    [mmsgSlots]unix.Iovec
	msgs    [mmsgSlots]unix.Mmsghdr
	readFn  func(fd uintptr) bool
	rcvBuf  int
	forced  bool
	closing atomic.Bool
}

// Dial opens the connector socket, joins the process events group, sets a
// receive buffer of rcvBuf bytes (with SO_RCVBUFFORCE when the process may,
// so it can pass net.core.rmem_max) and subscribes. bufSize is the read
// buffer for one datagram. It needs CAP_NET_ADMIN.
func Dial(rcvBuf, bufSize int) (*Conn, error) {
	nl, err := netlink.Dial(NetlinkConnector, &netlink.Config{Groups: IdxProc})
	if err != nil {
		return nil, fmt.Errorf("cnproc: opening netlink connector socket: %w", err)
	}
	raw, err := nl.SyscallConn()
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("cnproc: raw socket: %w", err)
	}
	c := &Conn{nl: nl, raw: raw, buf: make([]byte, max(bufSize, 4096)), slots: make([]byte, mmsgSlots*mmsgSlotSize)}
	for i := range c.msgs {
		c.iovs[i] = unix.Iovec{Base: &c.slots[i*mmsgSlotSize], Len: mmsgSlotSize}
		c.msgs[i].Hdr.Iov = &c.iovs[i]
		c.msgs[i].Hdr.Iovlen = 1
	}
	c.readFn = c.read
	if rcvBuf > 0 {
		if err := c.setRcvBuf(rcvBuf); err != nil {
			nl.Close()
			return nil, err
		}
	}
	if err := c.subscribe(McastListen); err != nil {
		nl.Close()
		return nil, err
	}
	return c, nil
}

func (c *Conn) setRcvBuf(n int) error {
	var serr error
	err := c.raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
		if serr == nil {
			c.forced = true
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, n)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("cnproc: setting receive buffer to %d bytes: %w", n, err)
	}
	err = c.raw.Control(func(fd uintptr) {
		c.rcvBuf, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("cnproc: reading receive buffer size: %w", err)
	}
	return nil
}

// RcvBuf returns the receive buffer the kernel granted (it doubles the
// requested size for its bookkeeping) and whether SO_RCVBUFFORCE was used.
func (c *Conn) RcvBuf() (bytes int, forced bool) { return c.rcvBuf, c.forced }

func (c *Conn) subscribe(op uint32) error {
	msg := AppendSubscribe(nil, op, c.nl.PID())
	var serr error
	err := c.raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return !errors.Is(serr, unix.EAGAIN)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("cnproc: subscribing to process events: %w", err)
	}
	return nil
}

// Datagrams are received up to mmsgSlots at a time with recvmmsg, each
// into a slot of mmsgSlotSize bytes (a cn_proc datagram is 76 bytes; a
// larger one would be cut and fail to decode, and be counted as such).
const (
	mmsgSlots    = 64
	mmsgSlotSize = 512
)

// read gathers every datagram waiting on the socket, back to back, into
// buf (each is a whole number of 4-byte aligned netlink messages, so the
// result decodes as one stream), a batch of datagrams per system call. It
// asks the poller to wait only when nothing at all was waiting.
func (c *Conn) read(fd uintptr) bool {
	c.n, c.rerr = 0, nil
	for len(c.buf)-c.n >= mmsgSlots*mmsgSlotSize {
		// Raw: MSG_DONTWAIT never blocks, and a scheduled system call
		// would wake the Go runtime's monitor thread after every idle
		// spell, which costs more than the read.
		k, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&c.msgs[0])), mmsgSlots,
			unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN:
			return c.n > 0
		case errno != 0:
			if c.n == 0 {
				c.rerr = errno
			} else {
				c.pending = errno // deliver what was read first
			}
			return true
		}
		for i := 0; i < int(k); i++ {
			n := min(int(c.msgs[i].Len), mmsgSlotSize)
			copy(c.buf[c.n:], c.slots[i*mmsgSlotSize:i*mmsgSlotSize+n])
			c.n += (n + 3) &^ 3
		}
		if int(k) < mmsgSlots {
			return true // drained
		}
	}
	return true
}

// Read waits for datagrams and returns all that were waiting, as one
// buffer of netlink messages valid until the next Read. It returns
// unix.ENOBUFS (test with errors.Is) when the socket overran and the
// kernel dropped messages; reading may go on after it. Read does not
// allocate.
func (c *Conn) Read() ([]byte, error) {
	if err := c.pending; err != nil {
		c.pending = nil
		return nil, err
	}
	if err := c.raw.Read(c.readFn); err != nil {
		if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) || c.closing.Load() {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("cnproc: reading: %w", err)
	}
	if c.rerr != nil {
		return nil, c.rerr
	}
	return c.buf[:c.n], nil
}

// Close unsubscribes and closes the socket; a blocked Read returns
// ErrClosed.
func (c *Conn) Close() error {
	c.closing.Store(true)
	_ = c.subscribe(McastIgnore)
	return c.nl.Close()
}
