package netmon

import (
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Process attribution maps a socket inode to the process holding it, the
// way ss -p does, by reading the links in /proc/PID/fd. Doing that for every
// process on every snapshot would cost a readlink per open file on the host
// (a proxy with 100,000 connections holds 100,000 of them), so the resolver
// is incremental:
//
//   - it lists /proc and stats /proc/PID/fd of each process, which the kernel
//     answers with the process's open file count;
//   - it scans (reads every fd link of) only processes it has not seen, and
//     processes whose fd count changed when there is a new socket it cannot
//     attribute yet or the process is a shell;
//   - it remembers, per process, the inet socket inodes it holds, so a rescan
//     updates the inode index without touching other processes;
//   - scans share a per-snapshot budget of fd links and CPU time; a process
//     left over is scanned on a later snapshot.
//
// Directory listing and readlink go through getdents64 and readlinkat on
// reused buffers, so a scan allocates nothing per fd.

// proc is what the resolver remembers about one process.
type proc struct {
	start   uint64   // start time in clock ticks, to notice a reused pid
	fdCount int64    // open files at the last scan (-1: never scanned)
	size    int64    // open files now, for ordering scans
	seen    uint32   // generation of the last /proc listing that had it
	inodes  []uint32 // inet socket inodes it held at the last scan
	exe     string
	comm    string
	shell   bool
	// shellAlerted is set once a shell holding sockets was reported.
	shellAlerted bool
	// dirty is set when fdCount moved since the last scan.
	dirty bool
	// cursor is where a scan cut short by the budget resumes (0: none).
	cursor int64
	// netns is the inode of its network namespace (0: not known), read
	// when the process is first listed and again when its fd count moves
	// (nsAt is the fd count then), so the listing finds every namespace
	// without a stat per process per snapshot.
	netns uint32
	nsAt  int64
}

// nsUse counts the processes listed in one network namespace and names
// the last one seen there, to open the namespace through.
type nsUse struct {
	procs int
	pid   int32
}

// resolver attributes socket inodes to processes; see above.
type resolver struct {
	root   string // procfs mount, "/proc" outside tests
	rootFD int
	shells map[string]bool

	procs map[int32]*proc
	owner map[uint32]int32 // inet socket inode -> pid
	gen   uint32
	// trackNS: learn each process's network namespace (all_namespaces).
	trackNS bool
	netns   map[uint32]*nsUse

	dirBuf  []byte
	fdBuf   []byte
	linkBuf []byte
	pathBuf []byte
	found   []uint32
	order   []int32
	changed []int32

	// cumulative statistics
	scans   uint64
	fdsRead uint64
}

func newResolver(root string, shells []string) (*resolver, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", root, err)
	}
	r := &resolver{
		root:    root,
		rootFD:  fd,
		shells:  map[string]bool{},
		procs:   map[int32]*proc{},
		owner:   map[uint32]int32{},
		netns:   map[uint32]*nsUse{},
		dirBuf:  make([]byte, 32<<10),
		fdBuf:   make([]byte, 64<<10),
		linkBuf: make([]byte, 256),
		pathBuf: make([]byte, 0, 64),
	}
	for _, s := range shells {
		r.shells[s] = true
	}
	return r, nil
}

func (r *resolver) Close() error {
	if r.rootFD < 0 {
		return nil
	}
	err := unix.Close(r.rootFD)
	r.rootFD = -1
	return err
}

// lookup returns the process holding inode.
func (r *resolver) lookup(inode uint32) (int32, *proc) {
	pid, ok := r.owner[inode]
	if !ok {
		return 0, nil
	}
	return pid, r.procs[pid]
}

// refreshResult reports one refresh.
type refreshResult struct {
	scanned  int     // processes scanned
	deferred int     // processes left for a later snapshot
	shells   []int32 // shells newly found holding inet sockets
}

// refresh brings the inode index up to date. isInet says whether an inode
// is an inet socket in the current snapshot; wanted holds the new sockets
// not attributed yet, and loses each one as it is attributed. It stops
// scanning when b is spent.
func (r *resolver) refresh(isInet func(uint32) bool, wanted map[uint32]bool, b *budget) refreshResult {
	var res refreshResult
	r.list()
	// New processes first, then changed ones, each smallest first, so a
	// giant process does not starve the rest.
	bySize := func(a, b int32) int { return int(r.procs[a].size - r.procs[b].size) }
	slices.SortFunc(r.order, bySize)
	slices.SortFunc(r.changed, bySize)
	newPids := len(r.order)
	r.order = append(r.order, r.changed...)
	for i, pid := range r.order {
		p := r.procs[pid]
		if i >= newPids && !p.shell && len(wanted) == 0 {
			continue // nothing to attribute: it stays dirty for later
		}
		if b.spent() {
			res.deferred = len(r.order) - i
			break
		}
		if r.scan(pid, p, isInet, wanted, b) {
			res.scanned++
			if p.shell && len(p.inodes) > 0 && !p.shellAlerted {
				p.shellAlerted = true
				res.shells = append(res.shells, pid)
			}
		}
	}
	return res
}

// list lists /proc: every process's fd count, which processes are new or
// changed (r.order, r.changed), and, with trackNS, the network namespace
// of new and changed processes. Processes gone are forgotten.
func (r *resolver) list() {
	r.gen++
	r.order, r.changed = r.order[:0], r.changed[:0]
	r.listPids(func(pid int32) {
		p := r.procs[pid]
		if p == nil {
			p = &proc{fdCount: -1, nsAt: -1}
			r.procs[pid] = p
		}
		p.seen = r.gen
		n, ok := r.fdCount(pid)
		if !ok {
			return // gone already
		}
		p.size = n
		if r.trackNS && (p.nsAt < 0 || n != p.nsAt) {
			r.setNetNS(pid, p, r.readNetNS(pid))
			p.nsAt = n
		}
		switch {
		case p.fdCount < 0 || p.cursor > 0: // new, or a scan to finish
			r.order = append(r.order, pid)
		case n != p.fdCount || p.dirty:
			p.dirty = true
			r.changed = append(r.changed, pid)
		}
	})
	// Forget processes that are gone.
	for pid, p := range r.procs {
		if p.seen != r.gen {
			r.dropInodes(pid, p)
			r.setNetNS(pid, p, 0)
			delete(r.procs, pid)
		}
	}
}

// readNetNS returns the inode of /proc/PID/ns/net (0 if unreadable).
func (r *resolver) readNetNS(pid int32) uint32 {
	var st unix.Stat_t
	if err := unix.Fstatat(r.rootFD, r.path(pid, "ns/net"), &st, 0); err != nil {
		return 0
	}
	return uint32(st.Ino)
}

// setNetNS records that p is in namespace ino (0: none) and keeps the
// per-namespace counts.
func (r *resolver) setNetNS(pid int32, p *proc, ino uint32) {
	if p.netns == ino {
		if u := r.netns[ino]; u != nil {
			u.pid = pid
		}
		return
	}
	if u := r.netns[p.netns]; u != nil {
		if u.procs--; u.procs <= 0 {
			delete(r.netns, p.netns)
		}
	}
	p.netns = ino
	if ino == 0 {
		return
	}
	u := r.netns[ino]
	if u == nil {
		u = &nsUse{}
		r.netns[ino] = u
	}
	u.procs++
	u.pid = pid
}

// prune forgets inodes that are no longer sockets of the snapshot (a
// process that closed them was not rescanned), once they are more than
// half of the index, so a stale inode can never be reused for a wrong
// answer and the index stays bounded.
func (r *resolver) prune(isInet func(uint32) bool, live int) {
	if len(r.owner) <= 2*live+1024 {
		return
	}
	for ino := range r.owner {
		if !isInet(ino) {
			delete(r.owner, ino)
		}
	}
}

// listPids calls fn for every numeric entry of the procfs root.
func (r *resolver) listPids(fn func(int32)) {
	if _, err := unix.Seek(r.rootFD, 0, 0); err != nil {
		return
	}
	for {
		n, err := unix.Getdents(r.rootFD, r.dirBuf)
		if err != nil || n <= 0 {
			return
		}
		eachDirent(r.dirBuf[:n], func(name []byte) {
			if pid, ok := atoi(name); ok {
				fn(int32(pid))
			}
		})
	}
}

// fdCount stats /proc/PID/fd, whose size the kernel reports as the number
// of open files (Linux 6.2 and later; earlier kernels report 0, which makes
// every process look unchanged and leaves rescans to new sockets).
func (r *resolver) fdCount(pid int32) (int64, bool) {
	var st unix.Stat_t
	if err := unix.Fstatat(r.rootFD, r.path(pid, "fd"), &st, 0); err != nil {
		return 0, false
	}
	return st.Size, true
}

func (r *resolver) path(pid int32, leaf string) string {
	r.pathBuf = strconv.AppendInt(r.pathBuf[:0], int64(pid), 10)
	r.pathBuf = append(r.pathBuf, '/')
	r.pathBuf = append(r.pathBuf, leaf...)
	return unsafe.String(unsafe.SliceData(r.pathBuf), len(r.pathBuf))
}

// scan reads every fd link of pid and replaces its inode set. It reports
// false if the process vanished or the budget ran out during the scan; in
// the latter case what was found is kept and the process stays dirty.
func (r *resolver) scan(pid int32, p *proc, isInet func(uint32) bool, wanted map[uint32]bool, b *budget) bool {
	start, ok := r.startTime(pid)
	if !ok {
		return false
	}
	if p.fdCount >= 0 && start != p.start {
		// The pid was reused by another process.
		r.dropInodes(pid, p)
		r.setNetNS(pid, p, 0)
		*p = proc{seen: p.seen, fdCount: -1, nsAt: -1}
	}
	p.start = start
	n, _ := r.fdCount(pid)
	dfd, err := unix.Openat(r.rootFD, r.path(pid, "fd"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		p.fdCount, p.dirty, p.cursor = n, false, 0
		return false
	}
	// A scan the budget cut short resumes where it stopped.
	resumed := false
	if p.cursor > 0 {
		if _, err := unix.Seek(dfd, p.cursor, 0); err == nil {
			resumed = true
		} else {
			p.cursor = 0
		}
	}
	r.found = r.found[:0]
	complete := false
	for {
		m, err := unix.Getdents(dfd, r.fdBuf)
		if err != nil || m <= 0 {
			complete = err == nil
			break
		}
		p.cursor = eachDirentZ(r.fdBuf[:m], func(name *byte) {
			b.fds--
			r.fdsRead++
			if ino, ok := r.readSocketLink(dfd, name); ok && isInet(ino) {
				r.found = append(r.found, ino)
			}
		})
		if b.spent() {
			break
		}
	}
	_ = unix.Close(dfd)
	r.scans++
	if complete && !resumed {
		r.dropInodes(pid, p)
		p.inodes = append(p.inodes[:0], r.found...)
	} else {
		// Part of a scan: add to what earlier parts found.
		for _, ino := range r.found {
			if r.owner[ino] != pid {
				p.inodes = append(p.inodes, ino)
			}
		}
	}
	for _, ino := range r.found {
		if _, taken := r.owner[ino]; !taken {
			r.owner[ino] = pid
			delete(wanted, ino)
		}
	}
	p.fdCount = n
	if complete {
		p.dirty, p.cursor = false, 0
	}
	if complete || p.exe == "" {
		// exec keeps the pid, so the name is read again on every scan.
		r.identify(pid, p)
	}
	return complete
}

func (r *resolver) dropInodes(pid int32, p *proc) {
	for _, ino := range p.inodes {
		if r.owner[ino] == pid {
			delete(r.owner, ino)
		}
	}
	p.inodes = p.inodes[:0]
}

// identify reads the executable path and command name of pid.
func (r *resolver) identify(pid int32, p *proc) {
	p.exe, p.comm = "", ""
	if n, err := unix.Readlinkat(r.rootFD, r.path(pid, "exe"), r.linkBuf); err == nil {
		p.exe = string(bytes.TrimSuffix(r.linkBuf[:n], []byte(" (deleted)")))
	}
	if n, ok := r.readFile(pid, "comm"); ok {
		p.comm = string(bytes.TrimSpace(r.linkBuf[:n]))
	}
	p.shell = r.shells[filepath.Base(p.exe)] || r.shells[p.comm]
}

// readFile reads up to len(linkBuf) bytes of /proc/PID/leaf into linkBuf.
func (r *resolver) readFile(pid int32, leaf string) (int, bool) {
	fd, err := unix.Openat(r.rootFD, r.path(pid, leaf), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	defer unix.Close(fd)
	n, err := unix.Read(fd, r.linkBuf)
	return n, err == nil
}

// startTime returns field 22 of /proc/PID/stat.
func (r *resolver) startTime(pid int32) (uint64, bool) {
	n, ok := r.readFile(pid, "stat")
	if !ok {
		return 0, false
	}
	return parseStartTime(r.linkBuf[:n])
}

// parseStartTime reads the start time (field 22) from a /proc/PID/stat
// line; the command name (field 2) may hold spaces and parentheses, so
// fields are counted from the last ')'.
func parseStartTime(b []byte) (uint64, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := bytes.Fields(b[i+1:])
	// After ')' come field 3 (state) onwards: starttime is index 22-3.
	if len(f) < 20 {
		return 0, false
	}
	v, err := strconv.ParseUint(string(f[19]), 10, 64)
	return v, err == nil
}

// readSocketLink reads the fd link name (a NUL-terminated name inside the
// dirent buffer) relative to dfd and returns the inode of "socket:[N]".
func (r *resolver) readSocketLink(dfd int, name *byte) (uint32, bool) {
	n, _, e := unix.Syscall6(unix.SYS_READLINKAT, uintptr(dfd), uintptr(unsafe.Pointer(name)),
		uintptr(unsafe.Pointer(&r.linkBuf[0])), uintptr(len(r.linkBuf)), 0, 0)
	if e != 0 {
		return 0, false
	}
	return parseSocketLink(r.linkBuf[:n])
}

// parseSocketLink returns N from "socket:[N]".
func parseSocketLink(b []byte) (uint32, bool) {
	const pre = "socket:["
	if len(b) < len(pre)+2 || string(b[:len(pre)]) != pre || b[len(b)-1] != ']' {
		return 0, false
	}
	v, ok := atoi(b[len(pre) : len(b)-1])
	if !ok || v > 1<<32-1 {
		return 0, false
	}
	return uint32(v), true
}

// atoi parses a decimal number without allocating.
func atoi(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, true
}

// linux_dirent64: d_ino u64, d_off s64, d_reclen u16, d_type u8, d_name.
const direntNameOff = 19

func eachDirent(b []byte, fn func(name []byte)) {
	for len(b) >= direntNameOff {
		reclen := int(*(*uint16)(unsafe.Pointer(&b[16])))
		if reclen < direntNameOff || reclen > len(b) {
			return
		}
		name := b[direntNameOff:reclen]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		fn(name)
		b = b[reclen:]
	}
}

// eachDirentZ is eachDirent for callers that pass the name to a system
// call: it hands out a pointer to the NUL-terminated name in place and
// skips "." and "..". It returns the directory offset after the last entry,
// to resume from with lseek.
func eachDirentZ(b []byte, fn func(name *byte)) (next int64) {
	for len(b) >= direntNameOff {
		next = *(*int64)(unsafe.Pointer(&b[8]))
		reclen := int(*(*uint16)(unsafe.Pointer(&b[16])))
		if reclen < direntNameOff+1 || reclen > len(b) {
			return
		}
		if b[direntNameOff] != '.' {
			fn(&b[direntNameOff])
		}
		b = b[reclen:]
	}
	return next
}
