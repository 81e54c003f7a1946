package etcdembed

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/server/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreCurrent()) }

func TestDataSurvivesRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	put := func(write bool) string {
		s, err := Start(ctx, Config{DataDir: dir, ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		defer s.Close() // idempotent
		<-s.Ready()
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		if write {
			if _, err := cli.Put(ctx, "k", "v"); err != nil {
				t.Fatal(err)
			}
		}
		r, err := cli.Get(ctx, "k")
		if err != nil || len(r.Kvs) != 1 {
			t.Fatalf("get: %v %v", r, err)
		}
		return string(r.Kvs[0].Value)
	}
	put(true)
	if v := put(false); v != "v" {
		t.Fatalf("after restart k = %q", v)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "no data dir", cfg: Config{}, want: "data-dir is required"},
		{name: "bad url", cfg: Config{DataDir: "d", ClientURL: "::"}, want: "etcd-client-url must be a URL"},
		{name: "request limit", cfg: Config{DataDir: "d", MaxRequestBytes: 10}, want: "etcd-max-request-bytes must be between 65536 and 67108864 (got 10)"},
		{name: "tls without pair", cfg: Config{DataDir: "d", TLS: pki.Files{CA: "ca"}}, want: "required to serve TLS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want %q", err, tt.want)
			}
		})
	}
}
