package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/client"
	"github.com/vigil-hids/vigil/server/store"
)

// serverProc is the real vigil-server binary (-server-bin), run as a
// process of its own against the simulator's cell: external etcd (the
// members' client URLs, plain HTTP on loopback), the simulator's keyspace
// prefix, the API in development mode (--insecure: plain HTTP on loopback,
// every caller an admin), no vulnerability index. The simulator reads its
// RSS and CPU like a member's, and polls its fleet progress answer (what
// `vigilctl fleet stop --wait` shows) during stop and resume.
type serverProc struct {
	cmd     *exec.Cmd
	done    chan struct{}
	url     string // http://127.0.0.1:port, the API
	logPath string
	api     *client.Client // vigilctl's client of the API
}

// serverArgs are the flags the simulator gives vigil-server.
func serverArgs(eps []string, prefix, listen, metrics, dataDir string) []string {
	return []string{
		"--etcd-endpoints", strings.Join(eps, ","),
		"--prefix", prefix,
		"--insecure",
		"--listen", listen,
		"--metrics-listen", metrics,
		"--no-vuln",
		"--data-dir", dataDir,
		"--artifact-dir", filepath.Join(dataDir, "artifacts"),
		"--log-level", "info",
	}
}

// startServer starts bin with serverArgs, logging to server.log in dir,
// and waits until GET /v1/status answers 200 (up to 60 s).
func startServer(bin string, eps []string, prefix, dir string) (*serverProc, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	dataDir := filepath.Join(dir, "server")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", ports[0])
	args := serverArgs(eps, prefix, listen, fmt.Sprintf("127.0.0.1:%d", ports[1]), dataDir)
	api, err := client.New(client.Config{Server: "http://" + listen})
	if err != nil {
		return nil, err
	}
	p := &serverProc{url: "http://" + listen, logPath: filepath.Join(dir, "server.log"), done: make(chan struct{}), api: api}
	lf, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = p.cmd.Start()
	lf.Close()
	if err != nil {
		return nil, fmt.Errorf("starting vigil-server %s: %w", bin, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := p.api.Status(context.Background())
		if err == nil {
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("vigil-server %s exited at start (%s): %s", bin, p.cmd.ProcessState, p.logTail())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.close()
			return nil, fmt.Errorf("vigil-server API %s/v1/status not answering after 60 s: %v; log: %s", p.url, err, p.logTail())
		}
	}
}

// logTail is the end of the server's log, for errors.
func (p *serverProc) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	b = bytes.TrimSpace(b)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// stat is the server process's RSS and CPU time.
func (p *serverProc) stat() *MemberStat {
	st := &MemberStat{Name: "vigil-server"}
	select {
	case <-p.done:
	default:
		st.Running = true
		st.RSSMB, st.CPUSeconds = procStats(p.cmd.Process.Pid)
	}
	return st
}

func (p *serverProc) close() {
	if p == nil || p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	p.api.Close()
	p.cmd = nil
}

// progressPoll polls the server's fleet progress of one write every
// 250 ms, as `vigilctl fleet stop --wait` does, and remembers when the
// server first answered that every targeted host acknowledged.
type progressPoll struct {
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	polls   int
	errs    int
	lastErr error
	last    store.Progress
	slowest time.Duration
	allAt   time.Duration // since t0; 0 = not yet
}

func (p *serverProc) pollProgress(ctx context.Context, rev int64, want int, t0 time.Time) *progressPoll {
	ctx, cancel := context.WithCancel(ctx)
	pp := &progressPoll{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(pp.done)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			start := time.Now()
			pr, err := p.api.Progress(ctx, api.Scope{Kind: api.ScopeFleet}, rev)
			took := time.Since(start)
			if ctx.Err() != nil {
				return
			}
			pp.mu.Lock()
			pp.polls++
			pp.slowest = max(pp.slowest, took)
			if err != nil {
				pp.errs++
				pp.lastErr = err
			} else {
				pp.last = pr
				if pr.Targeted >= int64(want) && pr.Acknowledged == pr.Targeted {
					pp.allAt = time.Since(t0)
					pp.mu.Unlock()
					return
				}
			}
			pp.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return pp
}

// finish waits up to grace for the server to report every host
// acknowledged, stops polling, and describes what the server answered.
func (pp *progressPoll) finish(grace time.Duration) string {
	select {
	case <-pp.done:
	case <-time.After(grace):
	}
	pp.cancel()
	<-pp.done
	pp.mu.Lock()
	defer pp.mu.Unlock()
	s := fmt.Sprintf("; vigil-server (GET /v1/fleet/progress every 250 ms, %d polls, slowest answer %d ms", pp.polls, pp.slowest.Milliseconds())
	if pp.errs > 0 {
		s += fmt.Sprintf(", %d errors, last: %v", pp.errs, pp.lastErr)
	}
	if pp.allAt > 0 {
		return s + fmt.Sprintf("): all %d acknowledged at %d ms after the write started", pp.last.Targeted, pp.allAt.Milliseconds())
	}
	return s + fmt.Sprintf("): not all acknowledged %s after the simulator's last: %d of %d", grace, pp.last.Acknowledged, pp.last.Targeted)
}
