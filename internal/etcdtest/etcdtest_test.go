package etcdtest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestEmbeddedPutGet(t *testing.T) {
	e := StartEmbedded(t)
	cli := e.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("get = %v, %v; want one key with value v", resp, err)
	}
}

func TestClusterSurvivesLeaderKillAndFreeze(t *testing.T) {
	c := StartCluster(t, 3)
	cli := c.Client(t)
	put := func(k string) {
		t.Helper()
		// A write during an election may time out; etcd clients retry.
		deadline := time.Now().Add(30 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := cli.Put(ctx, k, "v")
			cancel()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("put %s: %v", k, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	put("a")
	leader := c.Leader(t)
	c.Kill(t, leader)
	next := c.WaitLeader(t, leader)
	if next == leader {
		t.Fatalf("leader %d still leads after it was killed", leader)
	}
	put("b")
	c.Restart(t, leader)
	c.Freeze(t, next)
	put("c")
	c.Thaw(t, next)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if len(resp.Kvs) != 3 {
		t.Fatalf("got %d keys, want 3 (a, b, c)", len(resp.Kvs))
	}
}
