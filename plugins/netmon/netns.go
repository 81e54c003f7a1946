package netmon

import (
	"fmt"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/vigil-hids/vigil/plugins/procmon/procinfo"
)

// Every network namespace on the host has its own socket tables, and a
// sock_diag socket dumps only the namespace it was created in. With
// all_namespaces, netmon learns the namespace of each process from the
// /proc listing it already does for attribution (resolver.list: a stat of
// /proc/PID/ns/net when a process is first listed or its fd count moves),
// and keeps, per namespace other than its own, an open fd of that
// namespace and one sock_diag socket created inside it. Both are closed
// when no listed process is left in the namespace.

// netNS is one network namespace other than the plugin's own.
type netNS struct {
	ino   uint32
	fd    int     // open /proc/PID/ns/net, -1 once closed
	d     *dumper // nil: the socket could not be created (counted, logged)
	fails int     // dump failures in a row
	// logged: a failure of this namespace was logged (once per namespace).
	logged bool
	// container names the container of the process the namespace was
	// found through, from its cgroup (procmon's parser); empty if none.
	runtime, container, pod string
}

func (n *netNS) close() {
	if n.d != nil {
		_ = n.d.Close()
		n.d = nil
	}
	if n.fd >= 0 {
		_ = unix.Close(n.fd)
		n.fd = -1
	}
}

// selfNetNS returns the inode of the calling thread's network namespace.
func selfNetNS() uint32 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
			return 0
		}
	}
	return uint32(st.Ino)
}

// syncNetNS opens the namespaces the last /proc listing found and closes
// those no listed process is in any more.
func (m *monitor) syncNetNS() {
	if m.res == nil {
		return
	}
	for ino, n := range m.nss {
		if _, ok := m.res.netns[ino]; !ok {
			n.close()
			delete(m.nss, ino)
			m.nsOrder = slices.DeleteFunc(m.nsOrder, func(i uint32) bool { return i == ino })
		}
	}
	for ino, u := range m.res.netns {
		if ino == m.selfNS || m.nss[ino] != nil {
			continue
		}
		n, err := m.openNetNS(ino, u.pid)
		if err != nil {
			// The process left the namespace or exited: try again after
			// the next listing (which reads its namespace again), through
			// another process listed in it (the listing names a process
			// only when it is new or its fd count moves, so the others
			// may never name one).
			m.log.Debug("network namespace not opened", "netns", ino, "pid", u.pid, "error", err)
			if p := m.res.procs[u.pid]; p != nil {
				p.nsAt = -1
			}
			for pid, p := range m.res.procs {
				if p.netns == ino && pid != u.pid {
					u.pid = pid
					break
				}
			}
			continue
		}
		m.nss[ino] = n
		// Its processes may have been scanned before its sockets were
		// dumped (their inodes were then not sockets of a snapshot): they
		// are scanned again when a socket of theirs needs an owner.
		for _, p := range m.res.procs {
			if p.netns == ino {
				p.dirty = true
			}
		}
		i, _ := slices.BinarySearch(m.nsOrder, ino)
		m.nsOrder = slices.Insert(m.nsOrder, i, ino)
	}
	m.c.netns.Set(uint64(len(m.nss) + 1))
}

// openNetNS opens namespace ino through /proc/pid/ns/net and creates its
// sock_diag socket. A namespace whose socket cannot be created (setns
// needs CAP_SYS_ADMIN) is kept without one so it is not tried again on
// every snapshot; it is counted in netns_errors and logged once.
func (m *monitor) openNetNS(ino uint32, pid int32) (*netNS, error) {
	fd, err := unix.Openat(m.res.rootFD, m.res.path(pid, "ns/net"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || uint32(st.Ino) != ino {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("process %d is no longer in network namespace %d", pid, ino)
	}
	n := &netNS{ino: ino, fd: fd}
	if b, err := os.ReadFile(m.res.root + "/" + strconv.Itoa(int(pid)) + "/cgroup"); err == nil {
		var c procinfo.Container
		procinfo.ParseCgroup(b, &c)
		n.runtime, n.container, n.pod = c.Runtime, string(c.ID), string(c.PodUID)
	}
	var buf []byte
	if m.dump != nil {
		buf = m.dump.buf
	}
	d, err := newDumperBuf(fd, buf)
	if err != nil {
		m.c.nsErrors.Add(1)
		m.log.Warn("cannot dump the sockets of a network namespace", "netns", ino, "pid", pid, "container", n.container, "error", err)
		n.logged = true
		_ = unix.Close(fd)
		n.fd = -1
		return n, nil
	}
	d.warm = m.seen.warm
	d.refuseCompat = m.dump != nil && m.dump.refuseCompat
	n.d = d
	return n, nil
}

// closeNetNS closes every namespace's socket and fd.
func (m *monitor) closeNetNS() {
	for ino, n := range m.nss {
		n.close()
		delete(m.nss, ino)
	}
	m.nsOrder = m.nsOrder[:0]
}

// nsOf returns the namespace ino, or nil for the plugin's own.
func (m *monitor) nsOf(ino uint32) *netNS { return m.nss[ino] }
