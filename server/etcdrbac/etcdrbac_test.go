package etcdrbac

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/etcdembed"
	"github.com/vigil-hids/vigil/server/pki"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func client(t *testing.T, ep string, f pki.Files) *clientv3.Client {
	t.Helper()
	tc, err := f.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// TestBootstrapEnforcesPrefixes bootstraps RBAC on an embedded etcd that
// authenticates clients by certificate, then checks what each identity may
// do, as etcd itself enforces it.
func TestBootstrapEnforcesPrefixes(t *testing.T) {
	dir := t.TempDir()
	pd := filepath.Join(dir, "pki")
	if _, err := pki.Init(pd, pki.Options{}); err != nil {
		t.Fatal(err)
	}
	files := func(name string) pki.Files {
		return pki.Files{CA: filepath.Join(pd, "ca.crt"), Cert: filepath.Join(pd, name+".crt"), Key: filepath.Join(pd, name+".key")}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := etcdembed.Start(ctx, etcdembed.Config{DataDir: filepath.Join(dir, "data"), ClientURL: "http://127.0.0.1:0",
		PeerURL: "http://127.0.0.1:0", TLS: files("server")})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ks := api.NewKeyspace("")
	srv := client(t, e.Endpoint(), files("server"))
	res, err := Bootstrap(ctx, srv, ks)
	if err != nil || res.RootPassword == "" || res.AlreadyEnabled {
		t.Fatalf("Bootstrap = %+v, %v", res, err)
	}
	host := client(t, e.Endpoint(), files("host"))
	auditor := client(t, e.Endpoint(), files("auditor"))
	admin := client(t, e.Endpoint(), files("admin")) // no etcd user: operators go through the API
	fleet := ks.ScopeKey(api.Scope{Kind: api.ScopeFleet})
	tests := []struct {
		name    string
		cli     *clientv3.Client
		op      func(*clientv3.Client) error
		allowed bool
	}{
		{name: "server writes desired state", cli: srv, op: put(fleet), allowed: true},
		{name: "host reads desired state", cli: host, op: get(fleet), allowed: true},
		{name: "host writes its registration", cli: host, op: put(ks.Agent("web-1")), allowed: true},
		{name: "host may not write desired state", cli: host, op: put(fleet)},
		{name: "host may not write history", cli: host, op: put(ks.HistoryEntry(api.Scope{Kind: api.ScopeFleet}, 9))},
		{name: "host may not read history", cli: host, op: get(ks.HistoryEntry(api.Scope{Kind: api.ScopeFleet}, 1))},
		{name: "server publishes the keyring", cli: srv, op: put(ks.Keyring()), allowed: true},
		{name: "host reads the keyring", cli: host, op: get(ks.Keyring()), allowed: true},
		{name: "host watches the keyring", cli: host, op: watch(ks.Keyring()), allowed: true},
		{name: "host may not write the keyring", cli: host, op: put(ks.Keyring())},
		{name: "host may not delete the keyring", cli: host, op: del(ks.Keyring())},
		{name: "host may not write keyring history", cli: host, op: put(ks.KeyringRecordKey(7))},
		{name: "host may not read keyring history", cli: host, op: get(ks.KeyringRecordKey(1))},
		{name: "host may not watch keyring history", cli: host, op: watch(ks.KeyringHistory())},
		{name: "auditor reads the keyring", cli: auditor, op: get(ks.Keyring()), allowed: true},
		{name: "auditor reads", cli: auditor, op: get(fleet), allowed: true},
		{name: "auditor may not write", cli: auditor, op: put(fleet)},
		{name: "unknown identity refused", cli: admin, op: get(fleet)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op(tt.cli)
			if tt.allowed && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tt.allowed && !errors.Is(err, rpctypes.ErrPermissionDenied) && !errors.Is(err, rpctypes.ErrUserNotFound) &&
				!errors.Is(err, rpctypes.ErrAuthFailed) {
				t.Fatalf("want permission denied, got %v", err)
			}
		})
	}
	again, err := Bootstrap(ctx, client(t, e.Endpoint(), files("server")), ks)
	if err == nil || again.AlreadyEnabled && again.RootPassword != "" {
		t.Fatalf("re-bootstrap as vigil-server must be refused once auth is on: %+v %v", again, err)
	}
}

func put(key string) func(*clientv3.Client) error {
	return func(c *clientv3.Client) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.Put(ctx, key, "{}")
		return err
	}
}

func get(key string) func(*clientv3.Client) error {
	return func(c *clientv3.Client) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.Get(ctx, key)
		return err
	}
}

func del(key string) func(*clientv3.Client) error {
	return func(c *clientv3.Client) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.Delete(ctx, key)
		return err
	}
}

// watch opens a watch on key and waits for etcd's answer to it: a
// permission refusal cancels the watch with an error, an accepted watch
// is confirmed by its created notification.
func watch(key string) func(*clientv3.Client) error {
	return func(c *clientv3.Client) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		wc := c.Watch(clientv3.WithRequireLeader(ctx), key, clientv3.WithCreatedNotify())
		for resp := range wc {
			if err := resp.Err(); err != nil {
				if err.Error() == rpctypes.ErrGRPCPermissionDenied.Error() {
					// A canceled watch carries the refusal as its text
					// (the cancel reason), not as the typed error Get and
					// Put return.
					return fmt.Errorf("%w: %v", rpctypes.ErrPermissionDenied, err)
				}
				return err
			}
			if resp.Created {
				return nil
			}
		}
		return ctx.Err()
	}
}
