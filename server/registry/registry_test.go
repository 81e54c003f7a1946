package registry

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreCurrent()) }

func TestIndexFollowsRegistrations(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	ks := api.NewKeyspace("")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	put := func(key string, r api.Registration) int64 {
		b, _ := json.Marshal(r)
		resp, err := cli.Put(ctx, key, string(b))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	put(ks.Agent("a"), api.Registration{Host: "a", Labels: map[string]string{"env": "prod"}})
	x := Start(cli, ks, nil)
	defer x.Close()
	<-x.Ready()
	if h, _, ok, err := x.Get("a"); err != nil || !ok || h.Labels["env"] != "prod" {
		t.Fatalf("listed a = %+v %v %v", h, ok, err)
	}
	rev := put(ks.Agent("b"), api.Registration{Host: "b", Applied: api.Applied{Revision: 7}})
	put(ks.Agent("liar"), api.Registration{Host: "a"})
	if _, err := cli.Delete(ctx, ks.Agent("a")); err != nil {
		t.Fatal(err)
	}
	// A write outside the prefix: the index catches up by a progress
	// notification, not by an event.
	other, err := cli.Put(ctx, ks.ScopeKey(api.Scope{Kind: api.ScopeFleet}), "{}")
	if err != nil {
		t.Fatal(err)
	}
	if !x.Sync(ctx, other.Header.Revision) {
		t.Fatal("index did not reach the revision of an unrelated write")
	}
	got := map[string]Host{}
	at, err := x.Each(func(name string, h Host) { got[name] = h })
	if err != nil || at < rev {
		t.Fatalf("Each at %d: %v", at, err)
	}
	if len(got) != 2 || got["b"].Applied != 7 || !got["liar"].Mismatch || got["b"].Mismatch {
		t.Fatalf("index = %+v", got)
	}
	x.Close()
	x.Close()
}

// Sync right after the index listed, before its watch is open: etcd has
// no stream to answer the first progress request on, so Sync must ask
// again.
func TestSyncBeforeWatchOpens(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	ks := api.NewKeyspace("")
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		w := etcdtest.NewClient(t, []string{e.URL})
		x := Start(w, ks, nil)
		<-x.Ready()
		other, err := cli.Put(ctx, ks.ScopeKey(api.Scope{Kind: api.ScopeFleet}), "{}")
		if err != nil {
			t.Fatal(err)
		}
		ok := x.Sync(ctx, other.Header.Revision)
		cancel()
		x.Close()
		if !ok {
			t.Fatalf("round %d: the index never reached the revision %d of an unrelated write", i, other.Header.Revision)
		}
	}
}
