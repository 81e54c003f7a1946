// Command artifacts measures artifact serving: it starts a real vigil-server
// (a separate process, embedded etcd, mutual TLS), publishes a signed
// release of -size bytes through the API, then downloads it -n times with
// -c concurrent clients holding the host certificate, as hosts do, and
// prints the bytes served, the throughput and the server process's CPU time
// (from /proc/PID/stat, so the client's TLS work is not counted).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/server/client"
	"github.com/vigil-hids/vigil/server/pki"
	"github.com/vigil-hids/vigil/signing"
)

func main() {
	size := flag.Int64("size", 20<<20, "release binary size in bytes")
	n := flag.Int("n", 100, "downloads")
	c := flag.Int("c", 8, "concurrent downloads")
	bin := flag.String("server", "", "vigil-server binary (default: go build ./cmd/vigil-server)")
	flag.Parse()
	if err := run(*size, *n, *c, *bin); err != nil {
		fmt.Fprintln(os.Stderr, "artifacts:", err)
		os.Exit(1)
	}
}

func run(size int64, n, conc int, bin string) error {
	dir, err := os.MkdirTemp("", "vigil-artifacts-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if bin == "" {
		bin = filepath.Join(dir, "vigil-server")
		if out, err := exec.Command("go", "build", "-o", bin, "./cmd/vigil-server").CombinedOutput(); err != nil {
			return fmt.Errorf("building vigil-server: %v\n%s", err, out)
		}
	}
	pd := filepath.Join(dir, "pki")
	if _, err := pki.Init(pd, pki.Options{}); err != nil {
		return err
	}
	ports, err := etcdtest.FreePorts(3)
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	srv := exec.Command(bin, "--tls-dir", pd, "--data-dir", filepath.Join(dir, "data"), "--listen", addr,
		"--etcd-client-url", fmt.Sprintf("http://127.0.0.1:%d", ports[1]), "--etcd-peer-url", fmt.Sprintf("http://127.0.0.1:%d", ports[2]),
		"--log-level", "warn", "--artifact-max-bytes", strconv.FormatInt(size+1, 10))
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()

	files := func(role string) pki.Files {
		return pki.Files{CA: filepath.Join(pd, "ca.crt"), Cert: filepath.Join(pd, role+".crt"), Key: filepath.Join(pd, role+".key")}
	}
	admin, err := client.New(client.Config{Server: "https://" + addr, TLS: files("admin")})
	if err != nil {
		return err
	}
	defer admin.Close()
	ctx := context.Background()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if _, err := admin.Whoami(ctx); err == nil {
			break
		} else if time.Now().After(deadline) {
			return fmt.Errorf("server did not answer: %w", err)
		}
	}

	// A signed bundle of random bytes, published like vigilctl does.
	data := make([]byte, size)
	_, _ = rand.Read(data)
	src := filepath.Join(dir, "plugin")
	if err := os.WriteFile(src, data, 0o755); err != nil {
		return err
	}
	bd := filepath.Join(dir, "bundle")
	if _, err := signing.CreateBundle(bd, src, signing.Manifest{Plugin: "example", Version: "1.0.0", OS: "linux", Arch: "amd64",
		Expires: time.Now().Add(time.Hour), MinHostVersion: "0.1.0"}); err != nil {
		return err
	}
	_, sec, _ := signing.GenerateKey(nil)
	if _, err := signing.SignBundle(bd, sec); err != nil {
		return err
	}
	t0 := time.Now()
	pub, err := admin.Publish(ctx, bd)
	if err != nil {
		return err
	}
	publish := time.Since(t0)
	sha := pub.Artifact.SHA256
	sum := sha256.Sum256(data)
	if sha != hex.EncodeToString(sum[:]) {
		return fmt.Errorf("published sha256 %s differs", sha)
	}

	tc, err := files("host").ClientConfig()
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: conc}}
	url := "https://" + addr + "/v1/artifacts/" + sha
	// One ranged request, checked byte for byte.
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-", size/2))
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	tail, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(tail, data[size/2:]) {
		return fmt.Errorf("range request: %s, %d bytes", resp.Status, len(tail))
	}

	cpu0, err := procCPU(srv.Process.Pid)
	if err != nil {
		return err
	}
	var served, failed atomic.Int64
	jobs := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				resp, err := hc.Get(url)
				if err != nil {
					failed.Add(1)
					continue
				}
				h := sha256.New()
				m, err := io.Copy(h, resp.Body)
				resp.Body.Close()
				if err != nil || m != size || hex.EncodeToString(h.Sum(nil)) != sha {
					failed.Add(1)
					continue
				}
				served.Add(m)
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	wall := time.Since(start)
	cpu1, err := procCPU(srv.Process.Pid)
	if err != nil {
		return err
	}
	cpu := cpu1 - cpu0
	gb := float64(served.Load()) / (1 << 30)
	fmt.Printf("%-12s %-10s %-6s %-12s %-10s %-10s %-12s %-14s %-8s\n", "size", "downloads", "conc", "bytes", "wall", "MB/s", "server_cpu", "cpu_s_per_GB", "failed")
	fmt.Printf("%-12d %-10d %-6d %-12d %-10s %-10.1f %-12s %-14.2f %-8d\n", size, n, conc, served.Load(), wall.Round(time.Millisecond),
		float64(served.Load())/(1<<20)/wall.Seconds(), fmt.Sprintf("%.2fs", cpu.Seconds()), cpu.Seconds()/gb, failed.Load())
	fmt.Printf("publish of %d bytes (stream, sha256 check, fsync, etcd write): %s\n", size, publish.Round(time.Millisecond))
	if failed.Load() > 0 {
		return fmt.Errorf("%d downloads failed", failed.Load())
	}
	return nil
}

// procCPU is the user+system CPU time of pid so far.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) start at ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, nil
}
