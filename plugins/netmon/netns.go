package netmon

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

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

// errNSGone: the process named for a namespace exited or left it before
// the namespace was opened. That is normal (another process of the
// namespace is tried) and not counted; any other failure to open a
// namespace (EMFILE, EACCES without CAP_SYS_PTRACE, ...) leaves it
// unwatched and is counted in netns_errors and logged (nsOpenFailed).
var errNSGone = errors.New("netmon: process exited or left the network namespace")

// nsWarnEvery is how often a failure to open a namespace is logged per
// reason at most: a host of thousands of namespaces out of fds would
// otherwise log thousands of lines per snapshot.
const nsWarnEvery = time.Minute

// nsWarned is when a reason was last logged and how many failures of it
// were not logged since.
type nsWarned struct {
	at         time.Time
	suppressed int
}

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
			// The process left the namespace or exited (or could not
			// be opened, counted and logged): try again after the next
			// listing (which reads its namespace again), through
			// another process listed in it (the listing names a process
			// only when it is new or its fd count moves, so the others
			// may never name one).
			if errors.Is(err, errNSGone) {
				m.log.Debug("network namespace not opened", "netns", ino, "pid", u.pid, "error", err)
			} else {
				m.nsOpenFailed(ino, u.pid, err)
			}
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

// nsOpenFailed counts a failure to open namespace ino (other than
// errNSGone) in netns_errors and logs it at Warn, at most once a minute
// per reason (the errno's name), with the number of failures of that
// reason not logged since.
func (m *monitor) nsOpenFailed(ino uint32, pid int32, err error) {
	m.c.nsErrors.Add(1)
	reason := "other"
	if errno, ok := errors.AsType[unix.Errno](err); ok {
		if reason = unix.ErrnoName(errno); reason == "" {
			reason = strconv.Itoa(int(errno))
		}
	}
	if m.nsWarned == nil {
		m.nsWarned = map[string]*nsWarned{}
	}
	w := m.nsWarned[reason]
	if w == nil {
		w = &nsWarned{}
		m.nsWarned[reason] = w
	}
	now := m.clock.Now()
	if !w.at.IsZero() && now.Sub(w.at) < nsWarnEvery {
		w.suppressed++
		return
	}
	m.log.Warn("cannot open a network namespace: its sockets are not monitored",
		"netns", ino, "pid", pid, "reason", reason, "error", err, "not_logged_since_last", w.suppressed)
	w.at, w.suppressed = now, 0
}

// openNetNS opens namespace ino through /proc/pid/ns/net and creates its
// sock_diag socket. It returns an error wrapping errNSGone when the
// process exited or left the namespace. A namespace whose socket cannot
// be created (setns needs CAP_SYS_ADMIN) is kept without one so it is
// not tried again on every snapshot; it is counted in netns_errors and
// logged once.
func (m *monitor) openNetNS(ino uint32, pid int32) (*netNS, error) {
	fd, err := unix.Openat(m.res.rootFD, m.res.path(pid, "ns/net"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return nil, fmt.Errorf("opening the network namespace of process %d: %w (%w)", pid, errNSGone, err)
	}
	if err != nil {
		return nil, fmt.Errorf("opening the network namespace of process %d: %w", pid, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("stat of the network namespace fd of process %d: %w", pid, err)
	}
	if uint32(st.Ino) != ino {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("process %d is no longer in network namespace %d: %w", pid, ino, errNSGone)
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
