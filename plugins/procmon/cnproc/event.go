// Package cnproc speaks the Linux kernel's process events connector
// (cn_proc): it opens the netlink connector socket, subscribes to process
// events, and decodes each message into a fixed-size Event without
// allocating, so a reader can keep up with tens of thousands of events a
// second. It also tracks the per-CPU sequence numbers the kernel stamps on
// every message, which turn gaps into an exact count of lost events.
//
// The wire layout is that of <linux/connector.h> and <linux/cn_proc.h>: a
// netlink header, a struct cn_msg, and a struct proc_event, all in host byte
// order.
package cnproc

import (
	"encoding/binary"
	"errors"
)

// What is the kind of a process event (enum what in cn_proc.h).
type What uint32

// Event kinds.
const (
	None     What = 0x00000000 // the acknowledgement of a subscription
	Fork     What = 0x00000001
	Exec     What = 0x00000002
	UID      What = 0x00000004
	GID      What = 0x00000040
	SID      What = 0x00000080
	Ptrace   What = 0x00000100
	Comm     What = 0x00000200
	Coredump What = 0x40000000
	Exit     What = 0x80000000
)

// String returns the lower-case name of w, as used in event types.
func (w What) String() string {
	switch w {
	case None:
		return "none"
	case Fork:
		return "fork"
	case Exec:
		return "exec"
	case UID:
		return "uid"
	case GID:
		return "gid"
	case SID:
		return "sid"
	case Ptrace:
		return "ptrace"
	case Comm:
		return "comm"
	case Coredump:
		return "coredump"
	case Exit:
		return "exit"
	}
	return "unknown"
}

// ParseWhat returns the kind named s (the inverse of String).
func ParseWhat(s string) (What, bool) {
	for _, w := range []What{Fork, Exec, UID, GID, SID, Ptrace, Comm, Coredump, Exit} {
		if w.String() == s {
			return w, true
		}
	}
	return 0, false
}

// Netlink and connector constants.
const (
	// NetlinkConnector is the netlink family of the kernel connector.
	NetlinkConnector = 11
	// IdxProc and ValProc are the connector id of the process events.
	IdxProc = 1
	ValProc = 1

	// Subscription operations (enum proc_cn_mcast_op).
	McastListen uint32 = 1
	McastIgnore uint32 = 2

	nlmsgHdrLen  = 16
	cnMsgLen     = 20
	procEvHdrLen = 16 // what, cpu, timestamp_ns
	nlmsgDone    = 3
	nlmsgError   = 2
)

// Event is one decoded process event. It is a plain value with no
// pointers, so it can be queued by copy without touching the heap.
type Event struct {
	What What
	// CPU is the CPU that emitted the event; Seq is that CPU's sequence
	// number for it (cn_msg.seq).
	CPU uint32
	Seq uint32
	// Timestamp is the kernel's monotonic time of the event, in
	// nanoseconds since boot.
	Timestamp uint64

	// PID and TGID are the thread and process the event is about (the
	// child, for fork).
	PID, TGID int32
	// ParentPID and ParentTGID are the parent for fork, exit and
	// coredump, and the tracer for ptrace (zero on detach).
	ParentPID, ParentTGID int32

	// RealID and EffID are the real and effective uid (UID) or gid (GID).
	RealID, EffID uint32
	// ExitCode and ExitSignal are set for exit.
	ExitCode, ExitSignal uint32
	// Ack is the error number of a subscription acknowledgement (None).
	Ack uint32
	// Comm is the new task name, for comm; CommLen is its length.
	Comm    [16]byte
	CommLen uint8
}

// CommString returns the comm of a Comm event. It allocates; the hot path
// uses Comm[:CommLen] instead.
func (e *Event) CommString() string { return string(e.Comm[:e.CommLen]) }

// Decode errors. They are values, so a malformed message costs no
// allocation either.
var (
	ErrShort       = errors.New("cnproc: message too short")
	ErrNotProc     = errors.New("cnproc: not a process event message")
	ErrNetlinkErr  = errors.New("cnproc: netlink error message")
	ErrUnknownWhat = errors.New("cnproc: unknown event kind")
)

var le = binary.NativeEndian

// Decode decodes the first netlink message in b into ev and returns the
// number of bytes it took (aligned to 4), so a caller walks a datagram with
// several messages by slicing. On an error other than ErrShort, n still
// skips the bad message. Decode never allocates.
func Decode(b []byte, ev *Event) (n int, err error) {
	if len(b) < nlmsgHdrLen {
		return len(b), ErrShort
	}
	msgLen := int(le.Uint32(b[0:4]))
	typ := le.Uint16(b[4:6])
	if msgLen < nlmsgHdrLen || msgLen > len(b) {
		return len(b), ErrShort
	}
	n = min((msgLen+3)&^3, len(b))
	if typ == nlmsgError {
		return n, ErrNetlinkErr
	}
	body := b[nlmsgHdrLen:msgLen]
	if len(body) < cnMsgLen {
		return n, ErrShort
	}
	if le.Uint32(body[0:4]) != IdxProc || le.Uint32(body[4:8]) != ValProc {
		return n, ErrNotProc
	}
	seq := le.Uint32(body[8:12])
	dataLen := int(le.Uint16(body[16:18]))
	data := body[cnMsgLen:]
	if dataLen < len(data) {
		data = data[:dataLen]
	}
	if len(data) < procEvHdrLen {
		return n, ErrShort
	}
	*ev = Event{
		What:      What(le.Uint32(data[0:4])),
		CPU:       le.Uint32(data[4:8]),
		Seq:       seq,
		Timestamp: le.Uint64(data[8:16]),
	}
	return n, decodeBody(data[procEvHdrLen:], ev)
}

func i32(b []byte, off int) int32 { return int32(le.Uint32(b[off : off+4])) }

// decodeBody fills ev from the event_data union. Fields added by newer
// kernels (exit and coredump parents) are read only when present.
func decodeBody(d []byte, ev *Event) error {
	need := 8
	switch ev.What {
	case None:
		need = 4
	case Fork, Ptrace:
		need = 16
	case UID, GID:
		need = 16
	case Comm:
		need = 8 + 16
	case Exit:
		need = 16
	case Exec, SID, Coredump:
	default:
		return ErrUnknownWhat
	}
	if len(d) < need {
		return ErrShort
	}
	switch ev.What {
	case None:
		ev.Ack = le.Uint32(d[0:4])
		return nil
	case Fork:
		ev.ParentPID, ev.ParentTGID = i32(d, 0), i32(d, 4)
		ev.PID, ev.TGID = i32(d, 8), i32(d, 12)
		return nil
	}
	ev.PID, ev.TGID = i32(d, 0), i32(d, 4)
	switch ev.What {
	case UID, GID:
		ev.RealID, ev.EffID = le.Uint32(d[8:12]), le.Uint32(d[12:16])
	case Ptrace:
		ev.ParentPID, ev.ParentTGID = i32(d, 8), i32(d, 12)
	case Comm:
		c := d[8:24]
		l := 0
		for l < len(c) && c[l] != 0 {
			l++
		}
		copy(ev.Comm[:], c[:l])
		ev.CommLen = uint8(l)
	case Coredump:
		if len(d) >= 16 {
			ev.ParentPID, ev.ParentTGID = i32(d, 8), i32(d, 12)
		}
	case Exit:
		ev.ExitCode, ev.ExitSignal = le.Uint32(d[8:12]), le.Uint32(d[12:16])
		if len(d) >= 24 {
			ev.ParentPID, ev.ParentTGID = i32(d, 16), i32(d, 20)
		}
	}
	return nil
}

// AppendSubscribe appends the netlink message that subscribes to (op =
// McastListen) or leaves (McastIgnore) the process events.
func AppendSubscribe(dst []byte, op uint32, portID uint32) []byte {
	const total = nlmsgHdrLen + cnMsgLen + 4
	var b [total]byte
	le.PutUint32(b[0:4], total)
	le.PutUint16(b[4:6], nlmsgDone)
	le.PutUint32(b[12:16], portID)
	c := b[nlmsgHdrLen:]
	le.PutUint32(c[0:4], IdxProc)
	le.PutUint32(c[4:8], ValProc)
	le.PutUint16(c[16:18], 4)
	le.PutUint32(c[cnMsgLen:], op)
	return append(dst, b[:]...)
}

// AppendEvent appends ev encoded as the kernel would send it; tests and
// fixtures use it, and it documents the layout Decode reads.
func AppendEvent(dst []byte, ev *Event) []byte {
	var d [40]byte
	dl := 0
	put := func(off int, v uint32) {
		le.PutUint32(d[off:off+4], v)
		dl = max(dl, off+4)
	}
	switch ev.What {
	case None:
		put(0, ev.Ack)
	case Fork:
		put(0, uint32(ev.ParentPID))
		put(4, uint32(ev.ParentTGID))
		put(8, uint32(ev.PID))
		put(12, uint32(ev.TGID))
	default:
		put(0, uint32(ev.PID))
		put(4, uint32(ev.TGID))
	}
	switch ev.What {
	case UID, GID:
		put(8, ev.RealID)
		put(12, ev.EffID)
	case Ptrace, Coredump:
		put(8, uint32(ev.ParentPID))
		put(12, uint32(ev.ParentTGID))
	case Comm:
		copy(d[8:24], ev.Comm[:ev.CommLen])
		dl = 24
	case Exit:
		put(8, ev.ExitCode)
		put(12, ev.ExitSignal)
		put(16, uint32(ev.ParentPID))
		put(20, uint32(ev.ParentTGID))
	}
	// The union is sized by its largest member (exit: 24 bytes).
	dl = max(dl, 24)
	total := nlmsgHdrLen + cnMsgLen + procEvHdrLen + dl
	start := len(dst)
	dst = append(dst, make([]byte, total)...)
	b := dst[start:]
	le.PutUint32(b[0:4], uint32(total))
	le.PutUint16(b[4:6], nlmsgDone)
	le.PutUint32(b[8:12], ev.Seq)
	c := b[nlmsgHdrLen:]
	le.PutUint32(c[0:4], IdxProc)
	le.PutUint32(c[4:8], ValProc)
	le.PutUint32(c[8:12], ev.Seq)
	le.PutUint16(c[16:18], uint16(procEvHdrLen+dl))
	p := c[cnMsgLen:]
	le.PutUint32(p[0:4], uint32(ev.What))
	le.PutUint32(p[4:8], ev.CPU)
	le.PutUint64(p[8:16], ev.Timestamp)
	copy(p[16:], d[:dl])
	return dst
}
