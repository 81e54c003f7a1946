package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/vigil-hids/vigil/api"
)

// The observer process (-observer-process, the default) is the "server" of
// a fleet-wide stop or resume measured apart from the 20,000 host loops:
// the simulator re-executes itself with -serve-observer, and that process
// watches the agent prefix (watchAgents, the same code as in-process) and
// polls the applied revision (the timeline's), and writes each event to
// its stdout as one tab-separated line stamped with time.Now().UnixNano()
// when it was delivered. Those are wall-clock (CLOCK_REALTIME) readings;
// the parent compares them with its own wall-clock t0 (time.Unix(0, n)
// carries no monotonic reading, so Sub uses the wall clocks of both): the
// same clock of the same machine, comparable unless it is stepped during
// the run. The parent applies the same filters to these events as to its
// in-process watch (waitHostsTL, unchanged).
//
// Lines: "R" (watch created), "E host deleted appliedRev stopped
// updatedAtNs atNs size", "P atNs revision" (a poll answered), "F" (a poll
// not answered within 2 s). The observer exits when its stdin closes.

// observerProc is a running -serve-observer child.
type observerProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
	mu    sync.Mutex
	polls []obsPoll
	fails int
	err   error // a malformed line, if any
}

type obsPoll struct {
	at  time.Time
	rev int64
}

// startObserver starts the observer process watching the agent prefix from
// rev through eps and returns its events once its watch is created.
// requireLeader false keeps its watch open while the cell elects a leader
// (leader-loss, which gives it only the members that survive).
func (s *Sim) startObserver(ctx context.Context, eps []string, rev int64, requireLeader bool) (*observerProc, <-chan agentEvent, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	args := []string{"-serve-observer", strings.Join(eps, ","), s.opts.Prefix, strconv.FormatInt(rev, 10)}
	if !requireLeader {
		args = append(args, "no-require-leader")
	}
	cmd := exec.Command(self, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") && !strings.HasPrefix(kv, "GOGC=") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("starting the observer process: %w", err)
	}
	o := &observerProc{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	out := make(chan agentEvent, 4096)
	ready := make(chan struct{})
	go func() {
		defer close(o.done)
		defer close(out)
		defer func() { _ = cmd.Wait() }()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		isReady := false
		for sc.Scan() {
			if err := o.line(ctx, sc.Text(), out, ready, &isReady); err != nil {
				o.mu.Lock()
				o.err = err
				o.mu.Unlock()
				_ = cmd.Process.Kill()
				_, _ = io.Copy(io.Discard, stdout)
				break
			}
		}
		if !isReady {
			close(ready)
		}
	}()
	select {
	case <-ready:
	case <-ctx.Done():
	}
	select {
	case <-o.done:
		o.mu.Lock()
		defer o.mu.Unlock()
		if o.err == nil {
			o.err = errors.New("the observer process exited before its watch was created")
		}
		return nil, nil, o.err
	default:
	}
	return o, out, nil
}

func (o *observerProc) line(ctx context.Context, l string, out chan<- agentEvent, ready chan struct{}, isReady *bool) error {
	f := strings.Split(l, "\t")
	num := func(i int) (int64, error) {
		if i >= len(f) {
			return 0, fmt.Errorf("observer line %q: %d fields, want more", l, len(f))
		}
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("observer line %q: field %d: %w", l, i, err)
		}
		return n, nil
	}
	switch f[0] {
	case "R":
		if !*isReady {
			*isReady = true
			close(ready)
		}
	case "F":
		o.mu.Lock()
		o.fails++
		o.mu.Unlock()
	case "P":
		at, err := num(1)
		if err != nil {
			return err
		}
		rev, err := num(2)
		if err != nil {
			return err
		}
		o.mu.Lock()
		o.polls = append(o.polls, obsPoll{time.Unix(0, at), rev})
		o.mu.Unlock()
	case "E":
		var n [6]int64
		for i := range n {
			v, err := num(i + 2)
			if err != nil {
				return err
			}
			n[i] = v
		}
		e := agentEvent{host: f[1], deleted: n[0] == 1, at: time.Unix(0, n[4]), size: int(n[5])}
		e.reg.Applied.Revision, e.reg.Stopped, e.reg.UpdatedAt = n[1], n[2] == 1, time.Unix(0, n[3])
		select {
		case out <- e:
		case <-ctx.Done():
		}
	default:
		return fmt.Errorf("observer line %q: unknown kind %q", l, f[0])
	}
	return nil
}

// finish reads the observer's CPU time and RSS, stops it (stdin closed;
// SIGKILL after 10 s) and hands its polls from t0 on to tl.
func (o *observerProc) finish(t0 time.Time, tl *ackTimeline) string {
	rss, cpu := procStats(o.cmd.Process.Pid)
	_ = o.stdin.Close()
	select {
	case <-o.done:
	case <-time.After(10 * time.Second):
		_ = o.cmd.Process.Kill()
		<-o.done
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, p := range o.polls {
		if !p.at.Before(t0) {
			tl.addPoll(p.at.Sub(t0), p.rev)
		}
	}
	tl.addFailed(o.fails)
	note := fmt.Sprintf("; observer process (pid %d): CPU %.2f s, RSS %.0f MiB", o.cmd.Process.Pid, cpu, rss)
	if o.err != nil {
		note += "; observer error: " + o.err.Error()
	}
	return note
}

// serveObserver is the -serve-observer process: args are the endpoints
// (comma-separated), the keyspace prefix and the revision to watch from,
// and optionally "no-require-leader" (the watch stays open while the cell
// has no leader).
func serveObserver(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) != 3 && len(args) != 4 {
		return fmt.Errorf("-serve-observer: want endpoints prefix revision [no-require-leader], got %d arguments", len(args))
	}
	requireLeader := true
	if len(args) == 4 {
		if args[3] != "no-require-leader" {
			return fmt.Errorf("-serve-observer: fourth argument %q, want no-require-leader", args[3])
		}
		requireLeader = false
	}
	rev, err := strconv.ParseInt(args[2], 10, 64)
	if err != nil {
		return fmt.Errorf("-serve-observer: revision %q: %w", args[2], err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _, _ = io.Copy(io.Discard, stdin); cancel() }()
	s := &Sim{opts: Options{ObserverWatches: 1, Prefix: args[1]}, ks: api.NewKeyspace(args[1]), eps: strings.Split(args[0], ",")}
	cli, err := clientv3.New(clientv3.Config{Endpoints: s.eps, DialTimeout: 10 * time.Second,
		Logger: zap.NewNop(), MaxCallRecvMsgSize: 64 << 20})
	if err != nil {
		return fmt.Errorf("-serve-observer: etcd client: %w", err)
	}
	defer cli.Close()
	s.admin = cli
	var mu sync.Mutex
	w := bufio.NewWriterSize(stdout, 256<<10)
	emit := func(flush bool, format string, a ...any) {
		mu.Lock()
		fmt.Fprintf(w, format, a...)
		if flush {
			_ = w.Flush()
		}
		mu.Unlock()
	}
	evs := s.watchAgentsOpt(ctx, cli, s.ks.Agents(), true, rev, requireLeader)
	emit(true, "R\n")
	go func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			// The timeline's poll (startTimeline), in this process.
			rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
			resp, err := cli.Get(rctx, probeKey, clientv3.WithSerializable())
			rcancel()
			if err != nil {
				if ctx.Err() == nil {
					emit(true, "F\n")
				}
				continue
			}
			emit(true, "P\t%d\t%d\n", time.Now().UnixNano(), resp.Header.Revision)
		}
	}()
	b := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	for e := range evs {
		if strings.ContainsAny(e.host, "\t\n") {
			continue // not a simulated host; the line format cannot carry it
		}
		emit(len(evs) == 0, "E\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", e.host, b(e.deleted), e.reg.Applied.Revision,
			b(e.reg.Stopped), e.reg.UpdatedAt.UnixNano(), e.at.UnixNano(), e.size)
	}
	mu.Lock()
	defer mu.Unlock()
	return w.Flush()
}
