// Package memtrim keeps a long-running Vigil process's resident memory close
// to its working set.
//
// A Go binary's code and read-only data are mapped from its file. The kernel
// maps file pages in blocks around each fault ("fault-around", 64 KiB by
// default), and start-up touches code that never runs again (package init,
// flag and config parsing, protobuf descriptor building). Both leave many
// megabytes of file-backed pages resident that the process does not use.
// Trim marks the executable's mappings MADV_RANDOM (no read-ahead) and asks
// the kernel to reclaim them now (MADV_PAGEOUT); pages still in use come back
// on their next access. Anonymous memory (the heap) is left to the runtime.
package memtrim

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Result says how much was trimmed.
type Result struct {
	Mappings  int
	RSSBefore uint64 // bytes
	RSSAfter  uint64 // bytes
}

// Trim reclaims the file-backed pages of the running executable. It is
// cheap (a read of /proc/self/maps and a few madvise calls) and safe to call
// at any time; errors mean nothing was trimmed.
func Trim() (Result, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return Result{}, fmt.Errorf("memtrim: %w", err)
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return Result{}, fmt.Errorf("memtrim: %w", err)
	}
	defer f.Close()
	res := Result{RSSBefore: rss()}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[5] != exe || strings.Contains(fs[1], "w") {
			continue
		}
		lo, hi, ok := strings.Cut(fs[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		_ = madvise(start, end-start, unix.MADV_RANDOM)
		if err := madvise(start, end-start, unix.MADV_PAGEOUT); err != nil {
			return res, fmt.Errorf("memtrim: madvise %s: %w", fs[0], err)
		}
		res.Mappings++
	}
	res.RSSAfter = rss()
	return res, sc.Err()
}

// Schedule trims once after first (when start-up work has settled) and then
// every every, until stop is closed. It returns at once; the trimming runs
// in a goroutine that ends with stop.
func Schedule(stop <-chan struct{}, first, every time.Duration) {
	go func() {
		t := time.NewTimer(first)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_, _ = Trim()
				t.Reset(every)
			}
		}
	}()
}

func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	fs := strings.Fields(string(b))
	if len(fs) < 2 {
		return 0
	}
	n, _ := strconv.ParseUint(fs[1], 10, 64)
	return n * uint64(os.Getpagesize())
}

// madvise takes the range as integers: the mappings are the executable's
// own, never Go-managed memory, so no pointer is made from them.
func madvise(addr, length uint64, advice int) error {
	if _, _, e := unix.Syscall(unix.SYS_MADVISE, uintptr(addr), uintptr(length), uintptr(advice)); e != 0 {
		return e
	}
	return nil
}
