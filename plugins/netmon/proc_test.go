package netmon

import (
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// inodeOf returns the socket inode of a connection or listener.
func inodeOf(t *testing.T, c syscall.Conn) uint32 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Fstat(int(fd), &st) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	return uint32(st.Ino)
}

func TestResolverIncremental(t *testing.T) {
	r, err := newResolver("/proc", DefaultShells)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	l := listen(t, "tcp4", "127.0.0.1:0")
	first := inodeOf(t, l.(*net.TCPListener))
	inet := map[uint32]bool{first: true}
	isInet := func(ino uint32) bool { return inet[ino] }
	unlimited := func() *budget { return newBudget(time.Minute, 1<<30) }
	me := int32(os.Getpid())

	// First refresh: every process is new and scanned.
	wanted := map[uint32]bool{first: true}
	res := r.refresh(isInet, wanted, unlimited())
	if pid, p := r.lookup(first); pid != me || p == nil || p.exe == "" || len(wanted) != 0 {
		t.Fatalf("listener attributed to pid %d (%+v), wanted left %v; want us (%d)", pid, p, wanted, me)
	}
	if res.scanned == 0 {
		t.Fatal("first refresh scanned nothing")
	}

	// A new socket changes our fd count. With nothing wanted, we are not
	// rescanned: the change waits.
	c := dial(t, "tcp4", l.Addr().String())
	second := inodeOf(t, c.(*net.TCPConn))
	inet[second] = true
	r.refresh(isInet, map[uint32]bool{}, unlimited())
	if pid, _ := r.lookup(second); pid != 0 {
		t.Fatalf("new socket attributed without a rescan (pid %d)", pid)
	}
	if !r.procs[me].dirty {
		t.Fatal("our process not marked changed")
	}

	// Wanted now: our process is rescanned and the socket attributed.
	wanted = map[uint32]bool{second: true}
	r.refresh(isInet, wanted, unlimited())
	if pid, _ := r.lookup(second); pid != me || len(wanted) != 0 || r.procs[me].dirty {
		t.Fatalf("second socket attributed to %d, wanted left %v, dirty %t", pid, wanted, r.procs[me].dirty)
	}

	// A spent budget scans nothing and says so.
	c2 := dial(t, "tcp4", l.Addr().String())
	third := inodeOf(t, c2.(*net.TCPConn))
	inet[third] = true
	wanted = map[uint32]bool{third: true}
	res = r.refresh(isInet, wanted, newBudget(time.Minute, 0))
	if res.scanned != 0 || res.deferred == 0 || len(wanted) != 1 {
		t.Fatalf("with no fd budget: scanned %d, deferred %d, wanted %v", res.scanned, res.deferred, wanted)
	}

	// Closing sockets and pruning forgets them.
	delete(inet, first)
	r.prune(isInet, -1024)
	if pid, _ := r.lookup(first); pid != 0 {
		t.Fatal("pruned inode still attributed")
	}
}

func TestParseHelpers(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		ino  uint32
		ok   bool
	}{
		{name: "socket", in: "socket:[12345]", ino: 12345, ok: true},
		{name: "max inode", in: "socket:[4294967295]", ino: 4294967295, ok: true},
		{name: "too big", in: "socket:[4294967296]"},
		{name: "pipe", in: "pipe:[12345]"},
		{name: "file", in: "/dev/null"},
		{name: "empty number", in: "socket:[]"},
		{name: "unterminated", in: "socket:[12"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ino, ok := parseSocketLink([]byte(tc.in))
			if ino != tc.ino || ok != tc.ok {
				t.Fatalf("parseSocketLink(%q) = %d, %t; want %d, %t", tc.in, ino, ok, tc.ino, tc.ok)
			}
		})
	}
	for _, tc := range []struct {
		name, in string
		want     uint64
		ok       bool
	}{
		{name: "plain", in: "1 (bash) S 0 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 4242 1 2", want: 4242, ok: true},
		{name: "comm with spaces and parens", in: "7 (a) b) c) S 0 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 99 1 2", want: 99, ok: true},
		{name: "short", in: "7 (x) S 1 2"},
		{name: "no paren", in: "garbage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parseStartTime([]byte(tc.in))
			if got != tc.want || ok != tc.ok {
				t.Fatalf("parseStartTime = %d, %t; want %d, %t", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestResolverResumesLargeProcess gives the resolver a fd budget far below
// the test process's open files: the scan must resume where it stopped on
// each refresh, not start over, and still find a socket behind thousands
// of other fds.
func TestResolverResumesLargeProcess(t *testing.T) {
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for range 3000 {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	l := listen(t, "tcp4", "127.0.0.1:0") // after the 3000 files: a high fd
	ino := inodeOf(t, l.(*net.TCPListener))
	r, err := newResolver("/proc", DefaultShells)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.fdBuf = make([]byte, 2048) // about 85 entries per getdents
	isInet := func(i uint32) bool { return i == ino }
	me := int32(os.Getpid())
	refreshes := 0
	for ; refreshes < 2000; refreshes++ {
		r.refresh(isInet, map[uint32]bool{ino: true}, newBudget(time.Minute, 200))
		if pid, _ := r.lookup(ino); pid == me {
			break
		}
		if p := r.procs[me]; p != nil && p.cursor > 0 && p.fdCount < 0 {
			t.Fatal("a resumable scan left the process marked as never scanned")
		}
	}
	if pid, _ := r.lookup(ino); pid != me {
		t.Fatalf("socket behind 3000 fds not attributed after %d refreshes of 200 fds", refreshes)
	}
	// The listener's fd is the lowest free number when it was opened, which
	// earlier tests' closed files may have left below 3000. The scan reads
	// fds in ascending order and checks the budget after each getdents
	// batch (about 85 entries with this buffer), so a refresh reads at most
	// about 300 links: it needs at least fd/300 refreshes (less one for
	// rounding). Without the budget it would take one.
	var fd int
	sc, err := l.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		t.Fatal(err)
	}
	if refreshes < fd/300-1 {
		t.Fatalf("socket at fd %d attributed after %d refreshes of 200 fds: the fd budget was not applied", fd, refreshes)
	}
	// The socket may be found in a refresh whose budget ran out before the
	// fds opened after it (the resolver's own, other goroutines'): the
	// scan then finishes on the following refreshes, and a finished scan
	// leaves no cursor and nothing dirty.
	for extra := 0; r.procs[me].cursor != 0 && extra < 100; extra++ {
		r.refresh(isInet, map[uint32]bool{}, newBudget(time.Minute, 200))
	}
	if p := r.procs[me]; p.cursor != 0 || p.dirty {
		t.Fatalf("finished scan left cursor %d, dirty %t", p.cursor, p.dirty)
	}
	t.Logf("attributed after %d refreshes, %d fd links read", refreshes+1, r.fdsRead)
}
