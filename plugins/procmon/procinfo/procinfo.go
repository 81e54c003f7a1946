// Package procinfo reads what procmon needs to know about a process from
// /proc, with buffers owned by a Reader and reused for every process, so a
// busy host's exec storm does not turn into a garbage storm. It also parses
// /proc/PID/cgroup into a container attribution (docker, containerd, cri-o,
// podman, kubernetes pod) for cgroup v1 and v2.
//
// Every file of one process is opened relative to one directory descriptor
// of /proc/PID, so if the process exits and its pid is reused while it is
// being read, the reads fail instead of mixing two processes.
package procinfo

import (
	"errors"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrGone means the process no longer exists (or is a zombie whose memory
// and files are already gone), so its details cannot be read.
var ErrGone = errors.New("procinfo: process is gone")

// NUL-terminated names for the raw *at system calls.
var (
	nameCmdline = []byte("cmdline\x00")
	nameExe     = []byte("exe\x00")
	nameCwd     = []byte("cwd\x00")
	nameStatus  = []byte("status\x00")
	nameStat    = []byte("stat\x00")
	nameCgroup  = []byte("cgroup\x00")
	nameNSPid   = []byte("ns/pid\x00")
	nameNSMnt   = []byte("ns/mnt\x00")
	nameFD      = [3][]byte{[]byte("fd/0\x00"), []byte("fd/1\x00"), []byte("fd/2\x00")}
)

// Reader reads one process at a time. Slices it returns point into its
// buffers and stay valid until the next Open. A Reader is not safe for
// concurrent use; give each worker its own.
type Reader struct {
	root  []byte // "/proc/"
	path  []byte
	dirfd int

	cmdline []byte
	exe     []byte
	cwd     []byte
	link    []byte
	file    []byte
	cgroup  []byte
	fds     [3][]byte
}

// NewReader returns a Reader of the proc file system mounted at root
// (normally "/proc"). cmdlineMax caps the bytes of a command line kept.
func NewReader(root string, cmdlineMax int) *Reader {
	return &Reader{
		root:    []byte(root + "/"),
		path:    make([]byte, 0, len(root)+32),
		dirfd:   -1,
		cmdline: make([]byte, max(cmdlineMax, 16)),
		exe:     make([]byte, unix.PathMax),
		cwd:     make([]byte, unix.PathMax),
		link:    make([]byte, 256),
		file:    make([]byte, 8192),
		cgroup:  make([]byte, 8192),
		fds:     [3][]byte{make([]byte, 256), make([]byte, 256), make([]byte, 256)},
	}
}

func gone(errno syscall.Errno) bool { return errno == unix.ENOENT || errno == unix.ESRCH }

func (r *Reader) pidPath(pid int32) []byte {
	r.path = append(r.path[:0], r.root...)
	r.path = strconv.AppendInt(r.path, int64(pid), 10)
	return append(r.path, 0)
}

// The system calls that cannot block for long (path lookups in /proc,
// readlink of /proc links, reads of status and stat, close) are made raw,
// without telling the Go scheduler: a scheduled system call wakes the
// runtime's monitor thread (sysmon) whenever the process was idle, and
// under an exec storm those wake-ups cost more than the reads themselves.
// Reads that take a lock another process may hold for long (cmdline takes
// the target's mmap lock, cgroup the cgroup mutex) stay scheduled system
// calls, so a stuck process can only hold up the worker reading it.

func openat(dirfd int, name []byte, flags int) (int, syscall.Errno) {
	fd, _, errno := unix.RawSyscall6(unix.SYS_OPENAT, uintptr(dirfd), uintptr(unsafe.Pointer(&name[0])),
		uintptr(flags|unix.O_CLOEXEC), 0, 0, 0)
	return int(fd), errno
}

func readlinkat(dirfd int, name []byte, buf []byte) (int, syscall.Errno) {
	n, _, errno := unix.RawSyscall6(unix.SYS_READLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(&name[0])),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0)
	return int(n), errno
}

func closeFD(fd int) { unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0) }

// read reads into buf; a blocking read is a scheduled system call.
func read(fd int, buf []byte, blocking bool) (int, syscall.Errno) {
	var n uintptr
	var errno syscall.Errno
	if blocking {
		n, _, errno = unix.Syscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
	} else {
		n, _, errno = unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
	}
	return int(n), errno
}

// Open starts reading process pid. It returns ErrGone if the process has
// already been reaped. Close must follow.
func (r *Reader) Open(pid int32) error {
	r.Close()
	fd, errno := openat(unix.AT_FDCWD, r.pidPath(pid), unix.O_RDONLY|unix.O_DIRECTORY)
	if errno != 0 {
		if gone(errno) {
			return ErrGone
		}
		return errno
	}
	r.dirfd = fd
	return nil
}

// Close ends the reading of the current process.
func (r *Reader) Close() {
	if r.dirfd >= 0 {
		closeFD(r.dirfd)
		r.dirfd = -1
	}
}

// readFile reads name under the process directory into buf (up to its
// size) and returns the bytes read. blocking says whether reading the file
// may wait on a lock of the target process (see read).
func (r *Reader) readFile(name []byte, buf []byte, blocking bool) ([]byte, error) {
	fd, errno := openat(r.dirfd, name, unix.O_RDONLY)
	if errno != 0 {
		if gone(errno) {
			return nil, ErrGone
		}
		return nil, errno
	}
	defer closeFD(fd)
	n := 0
	for n < len(buf) {
		m, errno := read(fd, buf[n:], blocking)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			if errno == unix.ESRCH {
				return nil, ErrGone
			}
			return nil, errno
		}
		if m == 0 {
			break
		}
		n += m
		if n < len(buf) {
			// A short read is the end: these files (seq_file status,
			// stat, cgroup; cmdline, read page by page) give as much as
			// asked for until the end, so the read that would return 0
			// is saved.
			break
		}
	}
	return buf[:n], nil
}

func (r *Reader) readLink(name []byte, buf []byte) ([]byte, error) {
	n, errno := readlinkat(r.dirfd, name, buf)
	if errno != 0 {
		if gone(errno) {
			return nil, ErrGone
		}
		return nil, errno
	}
	return buf[:n], nil
}

// Exe returns the path of the executable, as the kernel shows it: with a
// " (deleted)" suffix if the file was removed, "/memfd:NAME (deleted)" for
// a memfd. ErrGone for a process that exited (its memory is released
// before it is reaped).
func (r *Reader) Exe() ([]byte, error) { return r.readLink(nameExe, r.exe) }

// Cwd returns the working directory.
func (r *Reader) Cwd() ([]byte, error) { return r.readLink(nameCwd, r.cwd) }

// FD returns what file descriptor n (0, 1 or 2) points to, e.g.
// "socket:[1234]" or "pipe:[99]" or "/dev/pts/0".
// Each descriptor has its own buffer.
func (r *Reader) FD(n int) ([]byte, error) { return r.readLink(nameFD[n], r.fds[n]) }

// Cmdline returns the command line with the arguments joined by spaces,
// capped at the Reader's limit. An exited process has an empty one.
func (r *Reader) Cmdline() ([]byte, error) {
	b, err := r.readFile(nameCmdline, r.cmdline, true)
	if err != nil {
		return nil, err
	}
	return spaced(b), nil
}

// spaced drops a command line's trailing NULs and turns the others into
// spaces.
func spaced(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	for i, c := range b {
		if c == 0 {
			b[i] = ' '
		}
	}
	return b
}

// Status holds the fields procmon takes from /proc/PID/status.
type Status struct {
	PPID                   int32
	UID, EUID, GID, EGID   uint32
	haveUID, haveGID, havP bool
}

// Status reads /proc/PID/status.
func (r *Reader) Status(st *Status) error {
	b, err := r.readFile(nameStatus, r.file, false)
	if err != nil {
		return err
	}
	return ParseStatus(b, st)
}

// Stat holds the fields procmon takes from /proc/PID/stat.
type Stat struct {
	PPID int32
	// TTY is the controlling terminal's device number (tty_nr), 0 if none.
	TTY uint32
	// StartTicks is the start time in clock ticks after boot.
	StartTicks uint64
}

// Stat reads /proc/PID/stat.
func (r *Reader) Stat(st *Stat) error {
	b, err := r.readFile(nameStat, r.file, false)
	if err != nil {
		return err
	}
	return ParseStat(b, st)
}

// Namespaces returns the inode numbers of the pid and mount namespaces.
func (r *Reader) Namespaces() (pidNS, mntNS uint64, err error) {
	b, err := r.readLink(nameNSPid, r.link)
	if err != nil {
		return 0, 0, err
	}
	pidNS = nsInode(b)
	b, err = r.readLink(nameNSMnt, r.link)
	if err != nil {
		return 0, 0, err
	}
	return pidNS, nsInode(b), nil
}

// nsInode reads the number out of "pid:[4026531836]".
func nsInode(b []byte) uint64 {
	var n uint64
	for _, c := range b {
		if c >= '0' && c <= '9' {
			n = n*10 + uint64(c-'0')
		}
	}
	return n
}

// Cgroup reads /proc/PID/cgroup and returns its container attribution.
func (r *Reader) Cgroup(c *Container) error {
	b, err := r.readFile(nameCgroup, r.cgroup, true)
	if err != nil {
		return err
	}
	ParseCgroup(b, c)
	return nil
}

// OtherExe reads the executable of another process (a parent) into dst
// without disturbing the current one.
func (r *Reader) OtherExe(pid int32, dst []byte) ([]byte, error) {
	p := r.pidPath(pid)
	p = append(p[:len(p)-1], "/exe\x00"...)
	n, errno := readlinkat(unix.AT_FDCWD, p, dst)
	if errno != 0 {
		if gone(errno) {
			return nil, ErrGone
		}
		return nil, errno
	}
	return dst[:n], nil
}

// Peek reads what of process pid dies with it (its memory and files go
// when it exits, before it is reaped): the command line, the executable
// and the working directory, by path, without opening the process
// directory (two system calls fewer than Open, Cmdline, Exe, Cwd, Close).
// For the exec path, which reads a process within microseconds of its
// exec, so a pid cannot be reused between the reads. The slices are
// valid until the next read; a missing cwd is nil with no error. The
// command line read is a scheduled system call (see read).
func (r *Reader) Peek(pid int32) (cmdline, exe, cwd []byte, err error) {
	p := r.pidPath(pid)
	dir := len(p) - 1
	p = append(p[:dir], "/cmdline\x00"...)
	fd, errno := openat(unix.AT_FDCWD, p, unix.O_RDONLY)
	if errno != 0 {
		if gone(errno) {
			return nil, nil, nil, ErrGone
		}
		return nil, nil, nil, errno
	}
	n, errno := read(fd, r.cmdline, true)
	closeFD(fd)
	if errno != 0 {
		if errno == unix.ESRCH {
			return nil, nil, nil, ErrGone
		}
		return nil, nil, nil, errno
	}
	cmdline = spaced(r.cmdline[:n])
	p = append(p[:dir], "/exe\x00"...)
	k, errno := readlinkat(unix.AT_FDCWD, p, r.exe)
	if errno != 0 {
		if gone(errno) {
			return nil, nil, nil, ErrGone // exited: the command line read is empty
		}
		return nil, nil, nil, errno
	}
	exe = r.exe[:k]
	p = append(p[:dir], "/cwd\x00"...)
	if k, errno := readlinkat(unix.AT_FDCWD, p, r.cwd); errno == 0 {
		cwd = r.cwd[:k]
	}
	return cmdline, exe, cwd, nil
}

// PeekFD is FD for the process of the last Peek, by path.
func (r *Reader) PeekFD(pid int32, n int) ([]byte, error) {
	p := r.pidPath(pid)
	p = append(p[:len(p)-1], '/')
	p = append(p, nameFD[n]...)
	k, errno := readlinkat(unix.AT_FDCWD, p, r.fds[n])
	if errno != 0 {
		if gone(errno) {
			return nil, ErrGone
		}
		return nil, errno
	}
	return r.fds[n][:k], nil
}

// OtherPPid reads the parent pid of another process (a parent, to find the
// grandparent) without disturbing the current one. It reuses the buffer
// of Status and Stat.
func (r *Reader) OtherPPid(pid int32) (int32, error) {
	p := r.pidPath(pid)
	p = append(p[:len(p)-1], "/stat\x00"...)
	fd, errno := openat(unix.AT_FDCWD, p, unix.O_RDONLY)
	if errno != 0 {
		if gone(errno) {
			return 0, ErrGone
		}
		return 0, errno
	}
	defer closeFD(fd)
	n, errno := read(fd, r.file, false)
	if errno != 0 {
		if errno == unix.ESRCH {
			return 0, ErrGone
		}
		return 0, errno
	}
	var st Stat
	if err := ParseStat(r.file[:n], &st); err != nil {
		return 0, err
	}
	return st.PPID, nil
}

// ErrFormat is returned for a status or stat file that does not parse.
var ErrFormat = errors.New("procinfo: unexpected file format")

// ParseStatus parses the Uid, Gid and PPid lines of a status file.
func ParseStatus(b []byte, st *Status) error {
	*st = Status{}
	for len(b) > 0 {
		line := b
		if i := indexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		switch {
		case hasPrefix(line, "Uid:"):
			f := fields4(line[4:])
			st.UID, st.EUID, st.haveUID = uint32(f[0]), uint32(f[1]), true
		case hasPrefix(line, "Gid:"):
			f := fields4(line[4:])
			st.GID, st.EGID, st.haveGID = uint32(f[0]), uint32(f[1]), true
		case hasPrefix(line, "PPid:"):
			f := fields4(line[5:])
			st.PPID, st.havP = int32(f[0]), true
		}
	}
	if !st.haveUID || !st.haveGID || !st.havP {
		return ErrFormat
	}
	return nil
}

// ParseStat parses ppid, tty_nr and starttime from a stat file. The
// command name in parentheses may hold spaces and parentheses itself, so
// fields are counted from the last ')'.
func ParseStat(b []byte, st *Stat) error {
	*st = Stat{}
	i := lastIndexByte(b, ')')
	if i < 0 {
		return ErrFormat
	}
	rest := b[i+1:]
	field := 2 // the field before the first one after ')'
	var cur uint64
	in := false
	for j := 0; j <= len(rest); j++ {
		if j < len(rest) && rest[j] != ' ' && rest[j] != '\n' {
			if !in {
				in, cur = true, 0
				field++
			}
			if c := rest[j]; c >= '0' && c <= '9' {
				cur = cur*10 + uint64(c-'0')
			}
			continue
		}
		if !in {
			continue
		}
		in = false
		switch field {
		case 4:
			st.PPID = int32(cur)
		case 7:
			st.TTY = uint32(cur)
		case 22:
			st.StartTicks = cur
			return nil
		}
	}
	return ErrFormat
}

// fields4 parses up to four unsigned decimal numbers separated by blanks.
func fields4(b []byte) [4]uint64 {
	var f [4]uint64
	k, in := 0, false
	for _, c := range b {
		if c >= '0' && c <= '9' {
			if !in {
				in = true
			}
			f[k] = f[k]*10 + uint64(c-'0')
			continue
		}
		if in {
			in = false
			if k++; k == len(f) {
				break
			}
		}
	}
	return f
}

func hasPrefix(b []byte, p string) bool { return len(b) >= len(p) && string(b[:len(p)]) == p }

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func lastIndexByte(b []byte, c byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == c {
			return i
		}
	}
	return -1
}

// AppendTTY appends the name of the terminal device tty (a tty_nr from
// stat) under /dev: "pts/3", "tty1", "ttyS0", or "major:minor".
func AppendTTY(dst []byte, tty uint32) []byte {
	major := (tty >> 8) & 0xfff
	minor := (tty & 0xff) | ((tty >> 12) & 0xfff00)
	switch {
	case tty == 0:
		return dst
	case major >= 136 && major <= 143:
		dst = append(dst, "pts/"...)
		return strconv.AppendUint(dst, uint64((major-136)*256+minor), 10)
	case major == 4 && minor < 64:
		dst = append(dst, "tty"...)
		return strconv.AppendUint(dst, uint64(minor), 10)
	case major == 4:
		dst = append(dst, "ttyS"...)
		return strconv.AppendUint(dst, uint64(minor-64), 10)
	case major == 5 && minor == 1:
		return append(dst, "console"...)
	}
	dst = strconv.AppendUint(dst, uint64(major), 10)
	dst = append(dst, ':')
	return strconv.AppendUint(dst, uint64(minor), 10)
}
