package netmon

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Socket is one TCP or UDP socket from a dump, kept compact and without
// pointers so a snapshot of hundreds of thousands of them costs the garbage
// collector nothing. The parser fills one Socket in place for every record.
type Socket struct {
	Local, Remote         [16]byte // IPv4 in the first 4 bytes
	LocalPort, RemotePort uint16
	Inode                 uint32 // 0 for TIME_WAIT and request sockets
	UID                   uint32
	NetNS                 uint32 // inode of the network namespace it was dumped from
	Family                uint8  // unix.AF_INET or unix.AF_INET6
	Proto                 uint8  // unix.IPPROTO_TCP or unix.IPPROTO_UDP
	State                 uint8  // kernel TCP state numbering (UDP uses 1 and 7)
}

// Address families, protocols and TCP states as the kernel numbers them.
const (
	afInet  = 2
	afInet6 = 10

	protoTCP = 6
	protoUDP = 17

	stateEstablished = 1
	stateSynSent     = 2
	stateTimeWait    = 6
	stateClose       = 7
	stateListen      = 10
)

// LocalAddr returns the local address.
func (s *Socket) LocalAddr() netip.Addr { return addrOf(s.Family, &s.Local) }

// RemoteAddr returns the remote address.
func (s *Socket) RemoteAddr() netip.Addr { return addrOf(s.Family, &s.Remote) }

func addrOf(family uint8, b *[16]byte) netip.Addr {
	if family == afInet {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(*b)
}

// ProtoName returns "tcp" or "udp".
func (s *Socket) ProtoName() string {
	if s.Proto == protoUDP {
		return "udp"
	}
	return "tcp"
}

// FamilyName returns "ipv4" or "ipv6".
func (s *Socket) FamilyName() string {
	if s.Family == afInet {
		return "ipv4"
	}
	return "ipv6"
}

// Netlink and inet_diag layout (include/uapi/linux/netlink.h,
// include/uapi/linux/inet_diag.h).
const (
	nlmsgHdrLen      = 16
	nlmsgError       = 2
	nlmsgDone        = 3
	nlmFDumpIntr     = 0x10
	sockDiagByFamily = 20
	inetDiagMsgLen   = 72
	inetDiagReqV2Len = 56
	// TCPDIAG_GETSOCK is the older inet_diag request (struct
	// inet_diag_req, 60 bytes). The kernel serves it as a dump of both
	// address families (AF_UNSPEC) in one walk of its socket tables, where
	// SOCK_DIAG_BY_FAMILY needs one walk per family; replies carry this
	// type.
	tcpDiagGetSock = 18
	inetDiagReqLen = 60
	afUnspec       = 0
)

// Parser errors.
var (
	ErrShortMessage = errors.New("netmon: truncated netlink message")
	ErrBadFamily    = errors.New("netmon: inet_diag message with unknown address family")
	// ErrDumpRefused wraps the errno of a netlink error message: the
	// kernel refused the request.
	ErrDumpRefused = errors.New("netmon: sock_diag dump refused")
)

// dumpResult says how a parsed datagram ended.
type dumpResult struct {
	done        bool // NLMSG_DONE seen: the dump is complete
	interrupted bool // NLM_F_DUMP_INTR: the kernel's tables changed under the dump
	sockets     int
}

// parseDiag parses one datagram of a sock_diag dump in b, filling s for each
// inet_diag_msg and calling fn with it. proto is the protocol the dump was
// asked for (inet_diag_msg does not carry it). It does not allocate: s is
// the caller's and is overwritten for every record.
func parseDiag(b []byte, proto uint8, s *Socket, fn func(*Socket)) (dumpResult, error) {
	var r dumpResult
	for len(b) >= nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		flags := binary.NativeEndian.Uint16(b[6:8])
		if l < nlmsgHdrLen || l > len(b) {
			return r, fmt.Errorf("%w: length %d with %d bytes left", ErrShortMessage, l, len(b))
		}
		if flags&nlmFDumpIntr != 0 {
			r.interrupted = true
		}
		payload := b[nlmsgHdrLen:l]
		switch typ {
		case nlmsgDone:
			r.done = true
			return r, nil
		case nlmsgError:
			if len(payload) < 4 {
				return r, fmt.Errorf("%w: error message of %d bytes", ErrShortMessage, len(payload))
			}
			if errno := -int32(binary.NativeEndian.Uint32(payload)); errno != 0 {
				return r, fmt.Errorf("%w: %w", ErrDumpRefused, errnoErr(errno))
			}
		case sockDiagByFamily, tcpDiagGetSock:
			if len(payload) < inetDiagMsgLen {
				return r, fmt.Errorf("%w: inet_diag_msg of %d bytes", ErrShortMessage, len(payload))
			}
			if err := decodeDiagMsg(payload, proto, s); err != nil {
				return r, err
			}
			r.sockets++
			fn(s)
		}
		// Messages are padded to 4 bytes.
		next := (l + 3) &^ 3
		if next > len(b) {
			next = len(b)
		}
		b = b[next:]
	}
	if len(b) != 0 {
		return r, fmt.Errorf("%w: %d trailing bytes", ErrShortMessage, len(b))
	}
	return r, nil
}

// decodeDiagMsg reads struct inet_diag_msg from p into s.
func decodeDiagMsg(p []byte, proto uint8, s *Socket) error {
	fam := p[0]
	if fam != afInet && fam != afInet6 {
		return fmt.Errorf("%w: %d", ErrBadFamily, fam)
	}
	s.Family = fam
	s.Proto = proto
	s.State = p[1]
	// struct inet_diag_sockid at offset 4: sport, dport (big endian), src[16], dst[16].
	s.LocalPort = binary.BigEndian.Uint16(p[4:6])
	s.RemotePort = binary.BigEndian.Uint16(p[6:8])
	copy(s.Local[:], p[8:24])
	copy(s.Remote[:], p[24:40])
	if fam == afInet {
		clear(s.Local[4:])
		clear(s.Remote[4:])
	}
	s.UID = binary.NativeEndian.Uint32(p[64:68])
	s.Inode = binary.NativeEndian.Uint32(p[68:72])
	return nil
}

// appendDiagRequest appends a SOCK_DIAG_BY_FAMILY dump request body
// (struct inet_diag_req_v2) asking for no extensions.
func appendDiagRequest(dst []byte, family, proto uint8, states uint32) []byte {
	var req [inetDiagReqV2Len]byte
	req[0] = family
	req[1] = proto
	binary.NativeEndian.PutUint32(req[4:8], states)
	return append(dst, req[:]...)
}

// appendCompatRequest appends a TCPDIAG_GETSOCK dump request body (struct
// inet_diag_req: family, lengths, extensions, the 48-byte socket id,
// states, dbs) asking for no extensions. The kernel ignores the family and
// dumps IPv4 and IPv6 together.
func appendCompatRequest(dst []byte, states uint32) []byte {
	var req [inetDiagReqLen]byte
	binary.NativeEndian.PutUint32(req[52:56], states)
	return append(dst, req[:]...)
}
