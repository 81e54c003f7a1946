// Command holder opens and holds many established TCP connections on
// loopback for netmon's benchmark: it listens on several 127.0.0.1 ports,
// connects to them from its own client sockets and accepts every
// connection, so it holds both ends (2 fds per connection), like a proxy.
// Run several holders for more connections than one process's fd limit
// allows (each with its own -base). It prints "ready N" when all connections are up and holds them until its
// standard input closes.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
)

func main() {
	n := flag.Int("n", 100000, "connections to hold")
	ports := flag.Int("ports", 4, "listener ports")
	base := flag.Int("base", 20001, "first listener port")
	workers := flag.Int("workers", 8, "connecting goroutines")
	flag.Parse()

	var lns []net.Listener
	var accepted atomic.Int64
	var held sync.Mutex
	var conns []net.Conn
	for i := range *ports {
		// No keepalives: Go enables them by default, and 200,000 sockets
		// probing every 15s overflow loopback's backlog until the kernel
		// resets connections that missed their probes.
		lc := net.ListenConfig{KeepAlive: -1}
		l, err := lc.Listen(context.Background(), "tcp4", fmt.Sprintf("127.0.0.1:%d", *base+i))
		if err != nil {
			log.Fatalf("listen: %v", err)
		}
		lns = append(lns, l)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				held.Lock()
				conns = append(conns, c)
				held.Unlock()
				accepted.Add(1)
			}
		}()
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(*n) {
					return
				}
				d := net.Dialer{KeepAlive: -1}
				c, err := d.Dial("tcp4", lns[i%int64(len(lns))].Addr().String())
				if err != nil {
					log.Fatalf("dial %d: %v", i, err)
				}
				held.Lock()
				conns = append(conns, c)
				held.Unlock()
			}
		}()
	}
	wg.Wait()
	for accepted.Load() < int64(*n) {
		// The accept loops are behind the dialers by at most the backlog.
		runtime.Gosched()
	}
	fmt.Printf("ready %d\n", *n)
	_, _ = io.Copy(io.Discard, os.Stdin)
}
