package store

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/server/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// BenchmarkFleet100k measures the operator reads over 100,000 realistic
// registrations in embedded etcd: a plain count (count-only range, no
// values), a count grouped by label, and stop progress with stragglers.
//
//	go test -run '^$' -bench Fleet100k -benchtime 5x ./server/store
func BenchmarkFleet100k(b *testing.B) {
	const hosts = 100_000
	e := etcdtest.StartEmbedded(b)
	cli := e.Client(b)
	s := New(cli, Options{Validate: validate})
	ks := s.Keyspace()
	ctx := context.Background()
	plugins := map[string]api.PluginStatus{"procmon": {Version: "1.2.3", State: "running"}, "netmon": {Version: "1.2.3", State: "running"}}
	for i := 0; i < hosts; i += 100 {
		ops := make([]clientv3.Op, 0, 100)
		for j := i; j < i+100; j++ {
			reg := api.Registration{Host: fmt.Sprintf("host-%06d", j), Version: "1.0.0",
				Labels:  map[string]string{"idc": fmt.Sprint("dc", j%8), "env": []string{"prod", "canary"}[j%2], "group": fmt.Sprint("g", j%50), "product": "web"},
				Applied: api.Applied{Revision: int64(j % 3)}, Plugins: plugins}
			v, _ := json.Marshal(reg)
			ops = append(ops, clientv3.OpPut(ks.Agent(reg.Host), string(v)))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("count", func(b *testing.B) {
		for range b.N {
			if c, err := s.Count(ctx, nil, ""); err != nil || c.Total != hosts {
				b.Fatal(c, err)
			}
		}
	})
	b.Run("count-by-idc", func(b *testing.B) {
		for range b.N {
			if c, err := s.Count(ctx, nil, "idc"); err != nil || c.Total != hosts || len(c.Groups) != 8 {
				b.Fatal(c, err)
			}
		}
	})
	b.Run("progress", func(b *testing.B) {
		for range b.N {
			if p, err := s.Progress(ctx, api.Scope{Kind: api.ScopeFleet}, 2); err != nil || p.Targeted != hosts || p.Acknowledged != hosts/3 {
				b.Fatal(p.Targeted, p.Acknowledged, err)
			}
		}
	})
	// The same with the registration index vigil-server keeps (list once,
	// then watch): each call is a single-key Get for the revision and a
	// walk over memory.
	x := registry.Start(cli, ks, nil)
	defer x.Close()
	<-x.Ready()
	si := New(cli, Options{Validate: validate, Index: x})
	b.Run("count-by-idc-indexed", func(b *testing.B) {
		for range b.N {
			if c, err := si.Count(ctx, nil, "idc"); err != nil || c.Total != hosts || len(c.Groups) != 8 {
				b.Fatal(c, err)
			}
		}
	})
	b.Run("progress-indexed", func(b *testing.B) {
		for range b.N {
			if p, err := si.Progress(ctx, api.Scope{Kind: api.ScopeFleet}, 2); err != nil || p.Targeted != hosts || p.Acknowledged != hosts/3 {
				b.Fatal(p.Targeted, p.Acknowledged, err)
			}
		}
	})
}
