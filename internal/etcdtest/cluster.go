package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Binary is Debian's etcd server (package etcd-server, 3.4).
const Binary = "/usr/bin/etcd"

// Cluster is a cluster of etcd processes on loopback ports.
type Cluster struct {
	Members []*Member
	token   string
}

// Member is one etcd process of a Cluster.
type Member struct {
	Name      string
	DataDir   string
	ClientURL string
	PeerURL   string
	LogPath   string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when cmd has been waited for
	frozen bool
	args   []string
}

// StartCluster starts n members of Binary and waits until they have a
// leader. The test is skipped when the binary is missing (install the
// Debian package etcd-server); every member is stopped (and thawed first if
// frozen) by t.Cleanup.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		t.Skipf("etcdtest: needs Debian's etcd-server package (%s): %v", Binary, err)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		c, err := startCluster(t, n)
		if err == nil {
			return c
		}
		lastErr = err
	}
	t.Fatalf("etcdtest: starting a %d-member cluster: %v", n, lastErr)
	return nil
}

func startCluster(t testing.TB, n int) (*Cluster, error) {
	ports, err := FreePorts(2 * n)
	if err != nil {
		return nil, err
	}
	dir := tempDir(t, "cluster")
	c := &Cluster{token: filepath.Base(dir)}
	var initial []string
	for i := 0; i < n; i++ {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			DataDir:   filepath.Join(dir, fmt.Sprintf("m%d.etcd", i)),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			LogPath:   filepath.Join(dir, fmt.Sprintf("m%d.log", i)),
		}
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		m.args = []string{
			"--name", m.Name,
			"--data-dir", m.DataDir,
			"--listen-client-urls", m.ClientURL,
			"--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL,
			"--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", c.token,
			"--logger", "zap",
			"--log-outputs", m.LogPath,
			"--log-level", "warn",
		}
	}
	t.Cleanup(c.stopAll)
	for _, m := range c.Members {
		if err := m.start(); err != nil {
			c.stopAll()
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	if _, err := c.waitLeader(ctx, -1); err != nil {
		c.stopAll()
		return nil, fmt.Errorf("%w (logs: %s)", err, c.tailLogs())
	}
	return c, nil
}

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.Members))
	for i, m := range c.Members {
		eps[i] = m.ClientURL
	}
	return eps
}

// Client returns a client of every member, closed by t.Cleanup.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return NewClient(t, c.Endpoints())
}

// Leader returns the index of the current leader, waiting for an election
// if there is none.
func (c *Cluster) Leader(t testing.TB) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	i, err := c.waitLeader(ctx, -1)
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	return i
}

// WaitLeader waits until a member other than not (-1 for any) leads and the
// members that run agree on it.
func (c *Cluster) WaitLeader(t testing.TB, not int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	i, err := c.waitLeader(ctx, not)
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	return i
}

func (c *Cluster) waitLeader(ctx context.Context, not int) (int, error) {
	var lastErr error
	for {
		i, err := c.leader(ctx, not)
		if err == nil {
			return i, nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("no leader: %w", lastErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// leader asks every running member for its status and returns the index of
// the leader they agree on.
func (c *Cluster) leader(ctx context.Context, not int) (int, error) {
	var leaderID uint64
	for i, m := range c.Members {
		if !m.Running() || m.Frozen() {
			continue
		}
		st, err := memberStatus(ctx, m.ClientURL)
		if err != nil {
			return -1, fmt.Errorf("status of %s: %w", m.Name, err)
		}
		if st.Leader == 0 {
			return -1, fmt.Errorf("%s has no leader", m.Name)
		}
		if leaderID != 0 && st.Leader != leaderID {
			return -1, fmt.Errorf("members disagree on the leader (%x, %x at %s)", leaderID, st.Leader, c.Members[i].Name)
		}
		leaderID = st.Leader
	}
	if leaderID == 0 {
		return -1, errors.New("no member runs")
	}
	for i, m := range c.Members {
		if !m.Running() || m.Frozen() {
			continue
		}
		st, err := memberStatus(ctx, m.ClientURL)
		if err != nil {
			return -1, err
		}
		if st.Header.MemberId == leaderID {
			if i == not {
				return -1, fmt.Errorf("%s still leads", m.Name)
			}
			return i, nil
		}
	}
	return -1, fmt.Errorf("leader %x is not a running member", leaderID)
}

func memberStatus(ctx context.Context, ep string) (*clientv3.StatusResponse, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{ep},
		DialTimeout: 2 * time.Second,
		Logger:      nopLogger(),
	})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return cli.Status(ctx, ep)
}

// Stop stops member i with SIGTERM and waits for it to exit.
func (c *Cluster) Stop(t testing.TB, i int) {
	t.Helper()
	if err := c.Members[i].stop(syscall.SIGTERM); err != nil {
		t.Fatalf("etcdtest: stopping %s: %v", c.Members[i].Name, err)
	}
}

// Kill kills member i with SIGKILL and waits for it to exit.
func (c *Cluster) Kill(t testing.TB, i int) {
	t.Helper()
	if err := c.Members[i].stop(syscall.SIGKILL); err != nil {
		t.Fatalf("etcdtest: killing %s: %v", c.Members[i].Name, err)
	}
}

// Restart starts a stopped member i again on its data directory and waits
// until the cluster has a leader.
func (c *Cluster) Restart(t testing.TB, i int) {
	t.Helper()
	if err := c.Members[i].start(); err != nil {
		t.Fatalf("etcdtest: restarting %s: %v", c.Members[i].Name, err)
	}
	c.WaitLeader(t, -1)
}

// Freeze stops member i with SIGSTOP: its sockets stay open but it answers
// nothing, like a hung machine. The member is resumed by Thaw or, at the
// latest, by t.Cleanup.
func (c *Cluster) Freeze(t testing.TB, i int) {
	t.Helper()
	if err := c.Members[i].signal(syscall.SIGSTOP, true); err != nil {
		t.Fatalf("etcdtest: freezing %s: %v", c.Members[i].Name, err)
	}
}

// Thaw resumes a frozen member i with SIGCONT.
func (c *Cluster) Thaw(t testing.TB, i int) {
	t.Helper()
	if err := c.Members[i].signal(syscall.SIGCONT, false); err != nil {
		t.Fatalf("etcdtest: thawing %s: %v", c.Members[i].Name, err)
	}
}

func (c *Cluster) stopAll() {
	for _, m := range c.Members {
		_ = m.signal(syscall.SIGCONT, false)
		_ = m.stop(syscall.SIGKILL)
	}
}

func (c *Cluster) tailLogs() string {
	var b strings.Builder
	for _, m := range c.Members {
		data, _ := os.ReadFile(m.LogPath)
		if len(data) > 2000 {
			data = data[len(data)-2000:]
		}
		fmt.Fprintf(&b, "\n--- %s ---\n%s", m.Name, data)
	}
	return b.String()
}

// Running reports whether the member's process runs (frozen or not).
func (m *Member) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil
}

// Frozen reports whether the member is stopped with SIGSTOP.
func (m *Member) Frozen() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.frozen
}

func (m *Member) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return fmt.Errorf("%s already runs", m.Name)
	}
	cmd := exec.Command(Binary, m.args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", m.Name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	m.cmd, m.done = cmd, done
	return nil
}

func (m *Member) stop(sig syscall.Signal) error {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if m.Frozen() {
		_ = m.signal(syscall.SIGCONT, false)
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	m.mu.Lock()
	m.cmd, m.done = nil, nil
	m.mu.Unlock()
	return nil
}

func (m *Member) signal(sig syscall.Signal, frozen bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return fmt.Errorf("%s does not run", m.Name)
	}
	if err := m.cmd.Process.Signal(sig); err != nil {
		return err
	}
	m.frozen = frozen
	return nil
}
