// Package etcdtest starts real etcd servers for tests: a single member
// embedded in the test process (go.etcd.io/etcd/server/v3/embed) and a
// cluster of Debian's etcd binary (/usr/bin/etcd, 3.4) as child processes.
// Both listen only on loopback ports chosen by the kernel, keep their data in
// a temporary directory and are stopped by t.Cleanup.
//
//	e := etcdtest.StartEmbedded(t)
//	cli := e.Client(t)
//
//	c := etcdtest.StartCluster(t, 3)
//	leader := c.Leader(t)
//	c.Kill(t, leader)
//	c.Restart(t, leader)
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// StartTimeout bounds how long a member may take to become ready.
const StartTimeout = 30 * time.Second

// Embedded is a single-member etcd running inside the test process.
type Embedded struct {
	Etcd    *embed.Etcd
	DataDir string
	// URL is the client URL, http://127.0.0.1:PORT.
	URL string

	closeOnce sync.Once
}

// Close stops the server (the test's cleanup does it otherwise). It is
// idempotent, unlike embed.Etcd.Close.
func (e *Embedded) Close() { e.closeOnce.Do(e.Etcd.Close) }

// StartEmbedded starts a single-member embedded etcd on loopback ports with
// its data in a temporary directory. Each mod, if any, may change the
// configuration before the server starts (TLS, auth, compaction, request
// limits); it runs after the defaults below are set. The server is closed by
// t.Cleanup.
func StartEmbedded(t testing.TB, mods ...func(*embed.Config)) *Embedded {
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		e, err := startEmbedded(t, mods)
		if err == nil {
			return e
		}
		lastErr = err
	}
	t.Fatalf("etcdtest: starting embedded etcd: %v", lastErr)
	return nil
}

func startEmbedded(t testing.TB, mods []func(*embed.Config)) (*Embedded, error) {
	dir := tempDir(t, "embed")
	ports, err := FreePorts(2)
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = dir
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "error"
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	curl := mustURL(fmt.Sprintf("http://127.0.0.1:%d", ports[0]))
	purl := mustURL(fmt.Sprintf("http://127.0.0.1:%d", ports[1]))
	cfg.ListenClientUrls = []url.URL{curl}
	cfg.AdvertiseClientUrls = []url.URL{curl}
	cfg.ListenPeerUrls = []url.URL{purl}
	cfg.AdvertisePeerUrls = []url.URL{purl}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	for _, m := range mods {
		m(cfg)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(StartTimeout):
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready after %s", StartTimeout)
	}
	scheme := "http"
	if !cfg.ClientTLSInfo.Empty() || cfg.ClientAutoTLS {
		scheme = "https"
	}
	em := &Embedded{
		Etcd:    e,
		DataDir: dir,
		URL:     fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[0]),
	}
	t.Cleanup(em.Close)
	return em, nil
}

// Endpoints returns the client endpoint list.
func (e *Embedded) Endpoints() []string { return []string{e.URL} }

// Client returns a client of the server, closed by t.Cleanup.
func (e *Embedded) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return NewClient(t, e.Endpoints())
}

// NewClient returns a plain (no TLS) client of endpoints, closed by t.Cleanup.
func NewClient(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      nopLogger(),
	})
	if err != nil {
		t.Fatalf("etcdtest: client of %v: %v", endpoints, err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// Compact compacts the keyspace at the current revision, so that watches
// from an older revision fail with ErrCompacted.
func Compact(t testing.TB, cli *clientv3.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "etcdtest-compact-probe")
	if err != nil {
		t.Fatalf("etcdtest: reading revision: %v", err)
	}
	rev := resp.Header.Revision
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("etcdtest: compacting at %d: %v", rev, err)
	}
	return rev
}

// FreePorts returns n loopback TCP ports that were free a moment ago. The
// kernel picks them from the ephemeral range, so collisions with other test
// processes are unlikely but possible; callers retry on a bind error.
func FreePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// tempDir returns a directory removed by t.Cleanup, on tmpfs when the
// machine has one so that fsync is cheap and tests do not depend on the
// disk's latency.
func tempDir(t testing.TB, name string) string {
	t.Helper()
	base := ""
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		base = "/dev/shm"
	}
	dir, err := os.MkdirTemp(base, "etcdtest-"+name+"-")
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func mustURL(s string) url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return *u
}

func nopLogger() *zap.Logger { return zap.NewNop() }
