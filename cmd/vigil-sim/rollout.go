package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vigil-hids/vigil/host/update"
	"github.com/vigil-hids/vigil/server/artifacts"
	"github.com/vigil-hids/vigil/signing"
)

// The rollout scenario (-scenarios rollout, alone) measures a release
// download: -hosts simulated hosts each wait their moment of the spread
// window (update.Spread, as vigil-host does) and fetch a -rollout-mb
// artifact with the real download code (update.Download: range resumes,
// length cap, sha256 check, fsync) from a content-addressed artifact store
// (server/artifacts, as vigil-server serves it) run in a process of its
// own, whose CPU and memory are measured. No etcd is involved: the release
// announcement is one key per cell; the bytes are the cost.

// rolloutStats is what the artifact server process reports.
type rolloutStats struct {
	Requests int64 `json:"requests"`
	Bytes    int64 `json:"bytes"`
	Errors   int64 `json:"errors"`
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// ReadFrom keeps http.ServeContent's sendfile path.
func (c countingWriter) ReadFrom(r io.Reader) (int64, error) {
	var n int64
	var err error
	if rf, ok := c.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(c.ResponseWriter, r)
	}
	c.n.Add(n)
	return n, err
}

// serveArtifacts is the artifact server process: GET /v1/artifacts/{sha}
// from the store in dir, GET /stats; it writes its address to addrFile.
func serveArtifacts(ctx context.Context, dir, addrFile string) error {
	st, err := artifacts.Open(artifacts.Config{Dir: dir})
	if err != nil {
		return err
	}
	var reqs, bytes, errs atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/artifacts/{sha}", func(w http.ResponseWriter, r *http.Request) {
		reqs.Add(1)
		if err := st.Serve(countingWriter{w, &bytes}, r, r.PathValue("sha")); err != nil {
			errs.Add(1)
			http.Error(w, err.Error(), http.StatusNotFound)
		}
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(rolloutStats{Requests: reqs.Load(), Bytes: bytes.Load(), Errors: errs.Load()})
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := os.WriteFile(addrFile, []byte("http://"+ln.Addr().String()+"\n"), 0o644); err != nil {
		return err
	}
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// runRollout runs the rollout scenario and returns its report.
func runRollout(ctx context.Context, o Options) (Report, error) {
	rep := Report{Hosts: o.Hosts, Started: time.Now().UTC(), LoadStart: loadAvg(), Etcd: "none (artifact download only)"}
	base := ""
	if dirExists("/dev/shm") {
		base = "/dev/shm"
	}
	dir, err := os.MkdirTemp(base, "vigil-sim-rollout-")
	if err != nil {
		return rep, err
	}
	defer os.RemoveAll(dir)
	// The artifact: random bytes, stored as vigil-server stores uploads.
	size := int64(o.RolloutMB) << 20
	st, err := artifacts.Open(artifacts.Config{Dir: filepath.Join(dir, "store"), MaxBytes: size + 1})
	if err != nil {
		return rep, err
	}
	blob := filepath.Join(dir, "blob")
	f, err := os.Create(blob)
	if err != nil {
		return rep, err
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		f.Close()
		return rep, err
	}
	sha := hex.EncodeToString(h.Sum(nil))
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return rep, err
	}
	_, err = st.Put(f, sha, size)
	f.Close()
	_ = os.Remove(blob)
	if err != nil {
		return rep, err
	}

	// The server in its own process, so that its CPU is its own.
	self, err := os.Executable()
	if err != nil {
		return rep, err
	}
	addrFile := filepath.Join(dir, "addr")
	cmd := exec.Command(self, "-serve-artifacts", filepath.Join(dir, "store"), addrFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return rep, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var baseURL string
	for i := 0; ; i++ {
		if b, err := os.ReadFile(addrFile); err == nil && len(b) > 0 {
			baseURL = strings.TrimSpace(string(b))
			break
		}
		if i > 300 {
			return rep, errors.New("artifact server did not start")
		}
		time.Sleep(100 * time.Millisecond)
	}

	m := signing.Manifest{Plugin: "vigil-host", Version: "9.9.9", OS: "linux", Arch: "amd64", Length: size, SHA256: sha}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	src := update.Source{Client: client, BaseURL: baseURL}
	dl := filepath.Join(dir, "hosts")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return rep, err
	}
	_, simCPU0 := procStats(os.Getpid())
	_, srvCPU0 := procStats(cmd.Process.Pid)
	t0 := time.Now()
	var mu sync.Mutex
	var lat []time.Duration // per host: download time
	var done []time.Duration
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	var maxRSS float64
	stopSample := make(chan struct{})
	go func() { // the server's peak RSS, sampled
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopSample:
				return
			case <-t.C:
				r, _ := procStats(cmd.Process.Pid)
				mu.Lock()
				maxRSS = max(maxRSS, r)
				mu.Unlock()
			}
		}
	}()
	for i := 0; i < o.Hosts; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("sim-%06d", i)
			select {
			case <-time.After(update.Spread(name, m.Plugin, m.Version, o.RolloutWindow)):
			case <-ctx.Done():
				return
			}
			start := time.Now()
			path, err := update.Download(ctx, src, m, dl)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			end := time.Now()
			_ = os.Remove(path)
			mu.Lock()
			lat = append(lat, end.Sub(start))
			done = append(done, end.Sub(t0))
			mu.Unlock()
		}()
	}
	wg.Wait()
	total := time.Since(t0)
	close(stopSample)
	_, simCPU1 := procStats(os.Getpid())
	srvRSS, srvCPU1 := procStats(cmd.Process.Pid)
	var stats rolloutStats
	if resp, err := client.Get(baseURL + "/stats"); err == nil {
		_ = json.NewDecoder(resp.Body).Decode(&stats)
		resp.Body.Close()
	}
	_, _, last := percentiles(done)
	mu.Lock()
	peak := max(maxRSS, srvRSS)
	mu.Unlock()
	want := int64(o.Hosts) * size
	note := fmt.Sprintf("%d hosts fetch a %d MiB artifact with update.Download over a %s spread window (update.Spread); time to 100%%: %.1f s; bytes served %d = %.3f × hosts × size (%d requests, %d failed hosts); artifact server process: CPU %.1f s, peak RSS %.0f MiB; simulator (download, sha256, fsync) CPU %.1f s",
		o.Hosts, o.RolloutMB, o.RolloutWindow, last/1000, stats.Bytes, float64(stats.Bytes)/float64(want), stats.Requests, failed.Load(), srvCPU1-srvCPU0, peak, simCPU1-simCPU0)
	if e, ok := firstErr.Load().(string); ok {
		note += "; first error: " + e
	}
	r := result("rollout", o.Hosts, o.Hosts, lat, total, "every host downloads; bytes served = hosts × size", len(lat) == o.Hosts && stats.Bytes == want, note)
	r.Load1 = load1()
	rep.Results = append(rep.Results, r)
	rep.LoadEnd = loadAvg()
	rep.MaxRSSMB = maxRSSMB()
	rep.CPUSeconds = simCPU1
	return rep, nil
}
