package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigil-hids/vigil/api"
)

// fakeApplier stands in for the host's plugin supervisor, which is not
// this package's: it records every Apply and task, and can hold Apply
// until released or reject a state.
type fakeApplier struct {
	mu      sync.Mutex
	applies []applied
	tasks   []api.Task
	gate    chan struct{} // if set, the first Apply waits for it
	reject  func(api.DesiredState) error
	status  map[string]api.PluginStatus
}

type applied struct {
	rev int64
	ds  api.DesiredState
	at  time.Time
}

func (f *fakeApplier) Apply(ctx context.Context, rev int64, ds api.DesiredState) error {
	f.mu.Lock()
	gate := f.gate
	f.gate = nil
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applies = append(f.applies, applied{rev: rev, ds: ds, at: time.Now()})
	if f.reject != nil {
		return f.reject(ds)
	}
	return nil
}

func (f *fakeApplier) Status() map[string]api.PluginStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

func (f *fakeApplier) RunTask(ctx context.Context, t api.Task) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tasks = append(f.tasks, t)
	if t.Name == "fail" {
		return errors.New("task failed on purpose")
	}
	return nil
}

func (f *fakeApplier) last() (applied, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.applies) == 0 {
		return applied{}, false
	}
	return f.applies[len(f.applies)-1], true
}

func (f *fakeApplier) taskIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for _, t := range f.tasks {
		ids = append(ids, t.ID)
	}
	return ids
}

func testConfig(endpoints []string, host string) Config {
	return Config{
		Endpoints:      endpoints,
		Host:           host,
		LeaseTTL:       2 * time.Second,
		DialTimeout:    2 * time.Second,
		RequestTimeout: 2 * time.Second,
		BackoffInitial: 50 * time.Millisecond,
		BackoffMax:     500 * time.Millisecond,
		OfflineGrace:   200 * time.Millisecond,
		StatusInterval: 200 * time.Millisecond,
	}
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("CONTROL_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func startLoop(t *testing.T, cfg Config, a Applier, opts ...Option) *Loop {
	t.Helper()
	l, err := Start(context.Background(), cfg, a, testLogger(t), opts...)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(l.Close)
	return l
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func putDoc(t *testing.T, cli *clientv3.Client, key string, ds api.DesiredState) int64 {
	t.Helper()
	rev, err := putDocErr(cli, key, ds)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// putDocErr writes a desired-state document, retrying for 30s: writes
// during an election may time out, and a server retries them.
func putDocErr(cli *clientv3.Client, key string, ds api.DesiredState) (int64, error) {
	b, err := json.Marshal(api.Document{Scope: key, Author: "test", Time: time.Now(), State: ds})
	if err != nil {
		return 0, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := cli.Put(ctx, key, string(b))
		cancel()
		if err == nil {
			return resp.Header.Revision, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("put %s: %w", key, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// getReg reads a host's registration; ok is false if the key is absent.
func getReg(t *testing.T, cli *clientv3.Client, key string) (api.Registration, *clientv3.GetResponse, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) == 0 {
		return api.Registration{}, resp, false
	}
	var r api.Registration
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		t.Fatalf("registration %s: %v", key, err)
	}
	return r, resp, true
}

func ptr[T any](v T) *T { return &v }
