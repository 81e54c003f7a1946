package vulnscan

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vigil-hids/vigil/plugins/vulnscan/collect"
	"github.com/vigil-hids/vigil/vuln/inventory"
)

// RPMReaderArg, as the first argument of the plugin's binary, makes it
// read one rpm database and exit (RPMReaderMain) instead of serving the
// plugin: the plugin reads rpm databases in such a child process of its
// own binary, under CPU, address-space and wall-clock limits, so that a
// parser bug collect.CheckRPM does not foresee costs at most one killed
// child, never a core spinning in the plugin.
const RPMReaderArg = "-vulnscan-read-rpm"

// The reader's limits. The CPU limit is the collection's timeout (at least
// a second); the address-space limit is what the Go runtime has mapped at
// start plus rpmMemoryBase plus rpmMemoryPerByte times the database's size.
// go-rpmdb keeps one value and the package list at a time; 8× the file
// and 512 MiB are far above what the largest database in go-rpmdb's own
// tests (33 MB, CentOS 7) needs.
const (
	rpmMemoryBase    = 512 << 20
	rpmMemoryPerByte = 8
	rpmMaxOutput     = 256 << 20 // the JSON package list read back
	rpmMaxStderr     = 4 << 10
)

// IsRPMReader says whether args (os.Args) ask for the rpm reader.
func IsRPMReader(args []string) bool { return len(args) > 1 && args[1] == RPMReaderArg }

// rpmAnswer is what the reader writes on its standard output.
type rpmAnswer struct {
	Packages []inventory.Package `json:"packages"`
	Error    string              `json:"error,omitempty"`
	// Problem is set when the database was refused as corrupt
	// (collect.CorruptError); Error is then the whole message.
	Problem string `json:"problem,omitempty"`
}

// RPMReaderMain is the child side, run by the plugin's main (and by this
// package's TestMain) when IsRPMReader(os.Args): args are what follows
// RPMReaderArg (the database path, the CPU limit in seconds, the memory
// headroom in bytes). It sets its own limits, reads the database with
// read (collect.ReadRPM), writes the answer as JSON to stdout and returns
// the exit code.
func RPMReaderMain(args []string, read func(path string) ([]inventory.Package, error)) int {
	if len(args) != 3 {
		fmt.Fprintf(os.Stderr, "usage: %s PATH CPU-SECONDS MEMORY-BYTES\n", RPMReaderArg)
		return 2
	}
	path := args[0]
	cpu, err1 := strconv.ParseUint(args[1], 10, 64)
	mem, err2 := strconv.ParseUint(args[2], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", RPMReaderArg, err)
		return 2
	}
	// Soft and hard CPU limits equal: the kernel sends SIGKILL when they
	// are reached (the Go runtime ignores SIGXCPU).
	if err := syscall.Setrlimit(syscall.RLIMIT_CPU, &syscall.Rlimit{Cur: cpu, Max: cpu}); err != nil {
		fmt.Fprintf(os.Stderr, "setting RLIMIT_CPU: %v\n", err)
		return 2
	}
	as := mem + mappedBytes()
	if err := syscall.Setrlimit(syscall.RLIMIT_AS, &syscall.Rlimit{Cur: as, Max: as}); err != nil {
		fmt.Fprintf(os.Stderr, "setting RLIMIT_AS: %v\n", err)
		return 2
	}
	debug.SetMemoryLimit(int64(mem / 2)) // collect garbage before the hard limit is near
	// go-rpmdb prints some complaints to stdout; stdout is the answer.
	out := os.Stdout
	os.Stdout = os.Stderr
	var a rpmAnswer
	pkgs, err := read(path)
	if err != nil {
		a.Error = err.Error()
		if ce := (*collect.CorruptError)(nil); errors.As(err, &ce) {
			a.Problem = ce.Problem
		}
	} else {
		a.Packages = pkgs
	}
	if err := json.NewEncoder(out).Encode(&a); err != nil {
		fmt.Fprintf(os.Stderr, "writing the answer: %v\n", err)
		return 2
	}
	return 0
}

// mappedBytes is the process's address space now (VmSize), 0 when unknown.
func mappedBytes() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmSize:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// readRPMIsolated reads the rpm database at path in a child process of
// this binary (/proc/self/exe, which stays the running binary even when
// an upgrade has replaced the file), killed after timeout or when ctx is
// done, limited to timeout of CPU time, and killed with the plugin
// (PR_SET_PDEATHSIG).
func readRPMIsolated(ctx context.Context, path string, timeout time.Duration) ([]inventory.Package, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("opening rpm database %s: %w", path, err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	secs := max(1, int64((timeout+time.Second-1)/time.Second))
	mem := uint64(rpmMemoryBase) + rpmMemoryPerByte*uint64(max(0, st.Size()))
	cmd := exec.CommandContext(ctx, "/proc/self/exe", RPMReaderArg, path, strconv.FormatInt(secs, 10), strconv.FormatUint(mem, 10))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &limitedWriter{w: &stdout, n: rpmMaxOutput}
	cmd.Stderr = &limitedWriter{w: &stderr, n: rpmMaxStderr}
	cmd.WaitDelay = time.Second

	// PR_SET_PDEATHSIG fires when the thread that forked the child exits:
	// keep this goroutine on its thread until the child has ended (see
	// host/spawn).
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		errc <- cmd.Run()
	}()
	runErr := <-errc

	if runErr != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("reading rpm database %s: the reader process was killed after %v (the database may be corrupt): %w", path, timeout, ctx.Err())
	}
	if runErr != nil && strings.Contains(stderr.String(), "fatal error: out of memory") {
		return nil, fmt.Errorf("reading rpm database %s: the reader process reached its memory limit (%d MiB above the Go runtime's own) and exited (the database may be corrupt)", path, mem>>20)
	}
	if runErr != nil {
		return nil, fmt.Errorf("reading rpm database %s: the reader process %s%s", path, describeExit(cmd.ProcessState, runErr, secs), tail(stderr.String()))
	}
	var a rpmAnswer
	if err := json.Unmarshal(stdout.Bytes(), &a); err != nil {
		return nil, fmt.Errorf("reading rpm database %s: the reader process's answer: %w%s", path, err, tail(stderr.String()))
	}
	switch {
	case a.Problem != "":
		return nil, &collect.CorruptError{Path: path, Problem: a.Problem}
	case a.Error != "":
		return nil, errors.New(a.Error)
	}
	return a.Packages, nil
}

// describeExit says how the reader process ended.
func describeExit(ps *os.ProcessState, err error, cpuSecs int64) string {
	if ps == nil {
		return fmt.Sprintf("could not run: %v", err)
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		if ws.Signal() == syscall.SIGKILL {
			// Not by the plugin, whose timeout was not reached: by the
			// kernel, at the CPU limit (or by the OOM killer).
			return fmt.Sprintf("was killed by SIGKILL, at its CPU limit of %ds (the database may be corrupt) or by the OOM killer", cpuSecs)
		}
		return fmt.Sprintf("was killed by %v", ws.Signal())
	}
	return fmt.Sprintf("failed (%v)", err)
}

// tail is the last line of a reader's stderr, ": "-prefixed, or "".
func tail(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	lines := strings.Split(s, "\n")
	// A Go runtime crash prints "fatal error: ..." first and a trace after.
	for _, l := range lines {
		if strings.HasPrefix(l, "fatal error: ") || strings.HasPrefix(l, "panic: ") {
			return ": " + l
		}
	}
	return ": " + lines[len(lines)-1]
}

// limitedWriter keeps the first n bytes and drops the rest, so a reader
// that writes without end costs the plugin no more than n.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.n -= k
		if _, err := l.w.Write(p[:k]); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}
