package cnproc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// ErrClosed is returned by Read after Close.
var ErrClosed = errors.New("cnproc: connection closed")

// Conn is a subscribed process events socket.
type Conn struct {
	nl  *netlink.Conn
	raw syscall.RawConn
	// After Detach: the socket's own descriptor, out of the Go runtime's
	// poller; dmu keeps Close from closing it under a Read.
	dfd    int
	dmu    sync.Mutex
	portID uint32

	// read state, reused by every Read so it does not allocate.
	buf     []byte
	n       int
	rerr    error
	more    bool // the last read stopped with datagrams possibly left
	pending error
	// recvmmsg state: one slot per datagram, gathered into buf.
	slots  []byte
	iovs   [mmsgSlots]unix.Iovec
	msgs   [mmsgSlots]unix.Mmsghdr
	readFn func(fd uintptr) bool
	// raw waits (WaitRaw, ReadNow)
	pfd       [1]unix.PollFd
	waitMS    int
	waitOK    bool
	pollFn    func(fd uintptr)
	readNowFn func(fd uintptr)
	rcvBuf    int
	forced    bool
	closing   atomic.Bool
}

// Options say how to open a socket.
type Options struct {
	// RcvBuf is the receive buffer in bytes (0: the system default). It
	// is set with SO_RCVBUFFORCE when the process may, so it can pass
	// net.core.rmem_max.
	RcvBuf int
	// BufSize is the read buffer: all datagrams one Read returns (at least
	// 32 KiB: one round of recvmmsg slots).
	BufSize int
	// ExecOnly attaches a socket filter that lets only exec events in
	// (ExecFilter): the kernel drops every other message before it is
	// queued, so nothing else wakes a reader of this socket.
	ExecOnly bool
}

// Dial opens the connector socket, joins the process events group, sets a
// receive buffer of rcvBuf bytes (with SO_RCVBUFFORCE when the process may,
// so it can pass net.core.rmem_max) and subscribes. bufSize is the read
// buffer for one datagram. It needs CAP_NET_ADMIN.
func Dial(rcvBuf, bufSize int) (*Conn, error) {
	return DialOptions(Options{RcvBuf: rcvBuf, BufSize: bufSize})
}

// whatOffset is where a datagram's event kind (proc_event.what) is: after
// the netlink header and the struct cn_msg.
const whatOffset = nlmsgHdrLen + cnMsgLen

// ExecFilter returns the classic BPF program that accepts exec events and
// drops everything else (other events, acknowledgements). An absolute load
// reads big-endian, and what is in host order, so the constant compared is
// Exec's bytes in host order read as big-endian; a datagram shorter than
// the load is dropped by the kernel's bounds check.
func ExecFilter() ([]bpf.RawInstruction, error) {
	var b [4]byte
	le.PutUint32(b[:], uint32(Exec))
	return bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: whatOffset, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: binary.BigEndian.Uint32(b[:]), SkipFalse: 1},
		bpf.RetConstant{Val: 0xffff},
		bpf.RetConstant{Val: 0},
	})
}

// DialOptions opens and subscribes a socket as o says; see Dial.
func DialOptions(o Options) (*Conn, error) {
	// An exec-only socket joins the group after its filter is attached,
	// or what arrives in between would pass unfiltered.
	groups := uint32(IdxProc)
	if o.ExecOnly {
		groups = 0
	}
	nl, err := netlink.Dial(NetlinkConnector, &netlink.Config{Groups: groups})
	if err != nil {
		return nil, fmt.Errorf("cnproc: opening netlink connector socket: %w", err)
	}
	raw, err := nl.SyscallConn()
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("cnproc: raw socket: %w", err)
	}
	rcvBuf, bufSize := o.RcvBuf, o.BufSize
	c := &Conn{nl: nl, raw: raw, dfd: -1, portID: nl.PID(), buf: make([]byte, max(bufSize, mmsgSlots*mmsgSlotSize)),
		slots: make([]byte, mmsgSlots*mmsgSlotSize)}
	for i := range c.msgs {
		c.iovs[i] = unix.Iovec{Base: &c.slots[i*mmsgSlotSize], Len: mmsgSlotSize}
		c.msgs[i].Hdr.Iov = &c.iovs[i]
		c.msgs[i].Hdr.Iovlen = 1
	}
	c.readFn = c.read
	c.pollFn = c.poll
	c.readNowFn = func(fd uintptr) { c.read(fd) }
	if rcvBuf > 0 {
		if err := c.setRcvBuf(rcvBuf); err != nil {
			nl.Close()
			return nil, err
		}
	}
	if o.ExecOnly {
		f, err := ExecFilter()
		if err == nil {
			err = nl.SetBPF(f)
		}
		if err == nil {
			err = nl.JoinGroup(IdxProc)
		}
		if err != nil {
			nl.Close()
			return nil, fmt.Errorf("cnproc: attaching the exec filter and joining the group: %w", err)
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
	msg := AppendSubscribe(nil, op, c.portID)
	var serr error
	if c.dfd >= 0 {
		serr = unix.Sendto(c.dfd, msg, unix.MSG_DONTWAIT, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if serr != nil {
			return fmt.Errorf("cnproc: subscribing to process events: %w", serr)
		}
		return nil
	}
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
	c.n, c.rerr, c.more = 0, nil, false
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
	c.more = true
	return true
}

// WaitRaw waits up to d for a datagram with a raw poll(2), without the Go
// scheduler: the calling goroutine keeps its P meanwhile, so no other
// goroutine of the process runs for up to d (nor can a garbage
// collection stop the world). It reports whether a datagram is waiting;
// ReadNow then takes it. A poll interrupted by signals (the runtime's
// preemption) is taken up again, up to three times.
//
// Why: a goroutine that parks in the runtime's poller leaves its P idle;
// its wake-up goes through the scheduler, and the next scheduled system
// call wakes the runtime's monitor thread from its deep sleep (it sleeps
// deeply only while every P is idle). Under a steady flow of events a
// short raw wait costs one thread wake-up per event and nothing else.
func (c *Conn) WaitRaw(d time.Duration) bool {
	c.waitMS = int(d / time.Millisecond)
	c.waitOK = false
	if c.dfd >= 0 {
		c.dmu.Lock()
		defer c.dmu.Unlock()
		if !c.closing.Load() {
			c.poll(uintptr(c.dfd))
		}
		return c.waitOK
	}
	_ = c.raw.Control(c.pollFn)
	return c.waitOK
}

func (c *Conn) poll(fd uintptr) {
	c.pfd[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	for range 3 { // a signal (the runtime preempting, a GC scan) is not the end of the wait
		n, _, errno := unix.RawSyscall(unix.SYS_POLL, uintptr(unsafe.Pointer(&c.pfd[0])), 1, uintptr(c.waitMS))
		if errno != unix.EINTR {
			c.waitOK = errno == 0 && n == 1
			return
		}
	}
}

// ReadNow returns the datagrams waiting, without waiting (possibly none);
// errors are as Read's.
func (c *Conn) ReadNow() ([]byte, error) {
	if err := c.pending; err != nil {
		c.pending = nil
		return nil, err
	}
	if c.dfd >= 0 {
		return c.readDetached()
	}
	c.n, c.rerr = 0, nil
	if err := c.raw.Control(c.readNowFn); err != nil || c.closing.Load() {
		return nil, ErrClosed
	}
	if c.rerr != nil {
		return nil, c.rerr
	}
	return c.buf[:c.n], nil
}

// More says whether the last Read filled its buffer before the socket was
// drained, so another Read may find more at once.
func (c *Conn) More() bool { return c.more }

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
	if c.dfd >= 0 {
		return c.readDetached()
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

// Detach takes the socket out of the Go runtime's network poller: after
// it, Read never waits and returns whatever is waiting, possibly nothing.
//
// Why: an fd registered in the runtime's epoll set (edge-triggered, so
// every arrival re-arms it) wakes the thread sleeping in the poller on
// every datagram, whether or not a goroutine waits on it. A socket read on
// a timer must not be in that set, or under a storm its datagrams wake the
// process anyway. Detach duplicates the descriptor and closes the
// netlink.Conn, whose close removes the descriptor from the runtime's
// epoll set (EPOLL_CTL_DEL) before closing it; the duplicate, never
// registered, keeps the socket (subscription, group, buffer) open. The
// socket was opened and subscribed through mdlayher/netlink like any
// other; only its reads are ours.
func (c *Conn) Detach() error {
	var fd int
	var derr error
	err := c.raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if err == nil {
		err = derr
	}
	if err != nil {
		return fmt.Errorf("cnproc: duplicating the socket: %w", err)
	}
	if err := c.nl.Close(); err != nil {
		unix.Close(fd)
		return fmt.Errorf("cnproc: closing the polled socket: %w", err)
	}
	c.dfd = fd
	return nil
}

// readDetached is Read after Detach: one non-blocking drain.
func (c *Conn) readDetached() ([]byte, error) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.closing.Load() {
		return nil, ErrClosed
	}
	c.read(uintptr(c.dfd))
	if c.rerr != nil {
		return nil, c.rerr
	}
	return c.buf[:c.n], nil
}

// Close unsubscribes and closes the socket; a blocked Read returns
// ErrClosed.
func (c *Conn) Close() error {
	if c.dfd >= 0 {
		c.dmu.Lock()
		defer c.dmu.Unlock()
		if c.closing.Swap(true) {
			return nil
		}
		_ = c.subscribe(McastIgnore)
		return unix.Close(c.dfd)
	}
	c.closing.Store(true)
	_ = c.subscribe(McastIgnore)
	return c.nl.Close()
}
