package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ackCost measures what one acknowledgement costs the cell, written two
// ways: the loop's guarded Txn (compare the key's create revision, put
// with the lease) and a plain Put with the lease. Each of the registered
// hosts' leases gets one key under <prefix>/ackcost/ holding a value the
// size of a registration; every round writes each key once from 256
// concurrent writers over the hosts' shared connections, and reads the
// members' and the simulator's CPU time before and after. Rounds
// alternate (txn, put, txn, put) so that drift in the machine's load does
// not favour one. The keys are deleted at the end.
func (s *Sim) ackCost(ctx context.Context) ([]Result, error) {
	prefix := s.opts.Prefix + "/ackcost/"
	n := len(s.hosts)
	keys := make([]string, n)
	leases := make([]clientv3.LeaseID, n)
	for i, h := range s.hosts {
		keys[i] = prefix + h.name
		leases[i] = h.loop.Status().Lease
	}
	val := strings.Repeat("x", 363)
	created := make([]int64, n)
	cellCPU := func() float64 {
		var t float64
		if s.cell != nil {
			for _, m := range s.cell.stats() {
				t += m.CPUSeconds
			}
		}
		return t
	}
	round := func(name string, write func(ctx context.Context, cli *clientv3.Client, i int) error) Result {
		var next atomic.Int64
		var failed atomic.Int64
		lat := make([]time.Duration, n)
		c0, s0 := cellCPU(), selfCPU()
		load := load1()
		t0 := time.Now()
		var wg sync.WaitGroup
		for w := 0; w < 256; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cli := s.clients[w%len(s.clients)]
				for {
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					b := time.Now()
					if err := write(wctx, cli, i); err != nil {
						failed.Add(1)
					} else {
						lat[i] = time.Since(b)
					}
					cancel()
				}
			}()
		}
		wg.Wait()
		total := time.Since(t0)
		dc, ds := cellCPU()-c0, selfCPU()-s0
		var done []time.Duration
		for _, d := range lat {
			if d > 0 {
				done = append(done, d)
			}
		}
		r := result("ackcost-"+name, n, n, done, total, "(informational)", failed.Load() == 0,
			fmt.Sprintf("%d writes of %d bytes with the hosts' leases, 256 writers: cell CPU %.2f s = %.0f µs per write (3 members), simulator CPU %.2f s = %.0f µs per write, %.0f writes/s, %d failed",
				n, len(val), dc, dc/float64(n)*1e6, ds, ds/float64(n)*1e6, float64(n)/total.Seconds(), failed.Load()))
		r.Load1 = load
		return r
	}
	var out []Result
	create := round("create", func(ctx context.Context, cli *clientv3.Client, i int) error {
		resp, err := cli.Put(ctx, keys[i], val, clientv3.WithLease(leases[i]))
		if err == nil {
			created[i] = resp.Header.Revision
		}
		return err
	})
	out = append(out, create)
	txn := func(ctx context.Context, cli *clientv3.Client, i int) error {
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(keys[i]), "=", created[i])).
			Then(clientv3.OpPut(keys[i], val, clientv3.WithLease(leases[i]))).
			Commit()
		if err == nil && !resp.Succeeded {
			return fmt.Errorf("compare failed")
		}
		return err
	}
	put := func(ctx context.Context, cli *clientv3.Client, i int) error {
		_, err := cli.Put(ctx, keys[i], val, clientv3.WithLease(leases[i]))
		return err
	}
	for _, r := range []string{"txn", "put", "txn", "put"} {
		if ctx.Err() != nil {
			break
		}
		f := txn
		if r == "put" {
			f = put
		}
		out = append(out, round(r, f))
	}
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := s.admin.Delete(dctx, prefix, clientv3.WithPrefix()); err != nil {
		return out, fmt.Errorf("deleting %s: %w", prefix, err)
	}
	return out, nil
}

// selfCPU is the simulator's own CPU time in seconds.
func selfCPU() float64 {
	_, c := procStats(os.Getpid())
	return c
}
