package netmon

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
)

// /proc/net/{tcp,tcp6,udp,udp6} are read only when sock_diag cannot be
// used (a kernel without the inet_diag modules, or a sandbox that forbids
// NETLINK_SOCK_DIAG). They are slower (the kernel formats text, and
// seq_file restarts its walk for every read) but carry the same fields.

// ErrProcNetLine reports a line of /proc/net/tcp* that does not parse.
var ErrProcNetLine = errors.New("netmon: malformed /proc/net line")

// parseProcNet reads one /proc/net/{tcp,tcp6,udp,udp6} table, filling s for
// each line and calling fn with it.
func parseProcNet(r io.Reader, family, proto uint8, s *Socket, fn func(*Socket)) (int, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<16)
	n := 0
	header := true
	var fields [12][]byte
	for sc.Scan() {
		if header {
			header = false
			continue
		}
		line := sc.Bytes()
		f := splitFields(line, fields[:0])
		if len(f) == 0 {
			continue
		}
		if len(f) < 10 {
			return n, fmt.Errorf("%w: %d fields in %q", ErrProcNetLine, len(f), line)
		}
		s.Family, s.Proto = family, proto
		var err error
		if s.LocalPort, err = hexAddrPort(f[1], family, &s.Local); err != nil {
			return n, fmt.Errorf("%w: local address %q: %v", ErrProcNetLine, f[1], err)
		}
		if s.RemotePort, err = hexAddrPort(f[2], family, &s.Remote); err != nil {
			return n, fmt.Errorf("%w: remote address %q: %v", ErrProcNetLine, f[2], err)
		}
		st, err := strconv.ParseUint(string(f[3]), 16, 8)
		if err != nil {
			return n, fmt.Errorf("%w: state %q", ErrProcNetLine, f[3])
		}
		s.State = uint8(st)
		uid, err1 := strconv.ParseUint(string(f[7]), 10, 32)
		ino, err2 := strconv.ParseUint(string(f[9]), 10, 32)
		if err1 != nil || err2 != nil {
			return n, fmt.Errorf("%w: uid %q or inode %q", ErrProcNetLine, f[7], f[9])
		}
		s.UID, s.Inode = uint32(uid), uint32(ino)
		n++
		fn(s)
	}
	if err := sc.Err(); err != nil {
		return n, fmt.Errorf("reading /proc/net table: %w", err)
	}
	return n, nil
}

func splitFields(b []byte, dst [][]byte) [][]byte {
	for len(b) > 0 && len(dst) < cap(dst) {
		b = bytes.TrimLeft(b, " \t")
		if len(b) == 0 {
			break
		}
		i := bytes.IndexAny(b, " \t")
		if i < 0 {
			i = len(b)
		}
		dst = append(dst, b[:i])
		b = b[i:]
	}
	return dst
}

// hexAddrPort decodes "0100007F:1F90": the address as 32-bit words in host
// byte order, the port in big-endian hex.
func hexAddrPort(b []byte, family uint8, addr *[16]byte) (uint16, error) {
	i := bytes.IndexByte(b, ':')
	if i < 0 {
		return 0, errors.New("no port")
	}
	want := 8
	if family == afInet6 {
		want = 32
	}
	if i != want {
		return 0, fmt.Errorf("address of %d hex digits, want %d", i, want)
	}
	*addr = [16]byte{}
	for w := 0; w < want/8; w++ {
		// The kernel printed each 32-bit word of the address as a host-order
		// integer: storing it back in host order restores the bytes.
		v, err := strconv.ParseUint(string(b[w*8:w*8+8]), 16, 32)
		if err != nil {
			return 0, err
		}
		binary.NativeEndian.PutUint32(addr[w*4:], uint32(v))
	}
	p, err := strconv.ParseUint(string(b[i+1:]), 16, 16)
	if err != nil {
		return 0, err
	}
	return uint16(p), nil
}

// collectProcNet reads the /proc/net tables in the same order as collect.
func (m *monitor) collectProcNet(st *Stats) error {
	type table struct {
		name          string
		family, proto uint8
		fn            func(*Socket)
	}
	tables := [...]table{
		{"tcp", afInet, protoTCP, m.onTCPProcNetListen},
		{"tcp6", afInet6, protoTCP, m.onTCPProcNetListen},
		{"udp", afInet, protoUDP, m.onUDPFn},
		{"udp6", afInet6, protoUDP, m.onUDPFn},
		{"tcp", afInet, protoTCP, m.onTCPProcNetConn},
		{"tcp6", afInet6, protoTCP, m.onTCPProcNetConn},
	}
	for i, t := range tables {
		if t.proto == protoUDP && !m.cfg.UDP {
			continue
		}
		f, err := os.Open(m.cfg.ProcRoot + "/net/" + t.name)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // IPv6 disabled
			}
			return fmt.Errorf("reading /proc/net fallback: %w", err)
		}
		n, err := parseProcNet(f, t.family, t.proto, &m.sock, t.fn)
		_ = f.Close()
		if i < 4 { // the connection pass rereads the TCP tables
			st.Sockets += n
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (m *monitor) onTCPProcNetListen(s *Socket) {
	if s.State == stateListen {
		m.onListen(s)
	}
}

func (m *monitor) onTCPProcNetConn(s *Socket) {
	if s.State != stateListen {
		m.onConnection(s)
	}
}
