package vulnstore_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/server/auth"
	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/server/vulnstore"
	"github.com/vigil-hids/vigil/vuln/ingest"
	"github.com/vigil-hids/vigil/vuln/inventory"
	"github.com/vigil-hids/vigil/vuln/osv"
	"github.com/vigil-hids/vigil/vuln/version"
)

// The API benchmarks run the real ingest and query routes (httpapi over
// vulnstore, bbolt on disk, plain HTTP on loopback) over a synthetic
// fleet, by default 100,000 hosts over 1,000 distinct Debian 12
// inventories of 1,000 packages and 5,000 advisories:
//
//	go test -run '^$' -bench API -benchtime 200x ./server/vulnstore
//	VIGIL_VULN_API_HOSTS=1000000 VIGIL_VULN_API_INVENTORIES=5000 go test ...
//
// The generator follows vuln/index's: 80 % of an inventory's packages
// are common to all, the rest drawn from a universe four times larger;
// three binaries per source; one source in ten behind.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

const pkgs, versions = 1000, 8

func ver(src, v int) string { return fmt.Sprintf("%d.%d.%d-%d+deb12u%d", 1+src%7, src%13, v, 1+v%3, v) }

func synthInventory(i int) inventory.Inventory {
	rng := rand.New(rand.NewPCG(uint64(i), 42))
	inv := inventory.Inventory{Ecosystem: "dpkg", OS: inventory.OS{ID: "debian", VersionID: "12", Codename: "bookworm"}}
	base, names := pkgs*8/10, pkgs*4
	chosen := map[int]bool{}
	for n := range base {
		chosen[n] = true
	}
	for len(chosen) < pkgs {
		chosen[base+rng.IntN(names-base)] = true
	}
	list := make([]int, 0, len(chosen))
	for n := range chosen {
		list = append(list, n)
	}
	slices.Sort(list)
	srcVer := map[int]int{}
	for _, n := range list {
		src := n / 3
		v, ok := srcVer[src]
		if !ok {
			v = versions/2 + rng.IntN(versions/2)
			if rng.IntN(10) == 0 {
				v = rng.IntN(versions)
			}
			srcVer[src] = v
		}
		inv.Packages = append(inv.Packages, inventory.Package{Name: "pkg" + strconv.Itoa(n), Version: ver(src, v), Arch: "amd64",
			Source: "src" + strconv.Itoa(src)})
	}
	return inv
}

func synthAdvisory(i int) *osv.Advisory {
	rng := rand.New(rand.NewPCG(uint64(i), 7))
	src := rng.IntN(pkgs * 4 / 3)
	if rng.IntN(2) == 0 {
		src = rng.IntN(pkgs * 8 / 10 / 3)
	}
	cve := fmt.Sprintf("CVE-2024-%05d", i)
	return &osv.Advisory{ID: "DEBIAN-" + cve, CVEs: []string{cve}, Severity: osv.Severity{Level: osv.Level(1 + rng.IntN(4))},
		Affected: []osv.Affected{{Ecosystem: osv.Ecosystem{Distro: "debian", Release: "12", Kind: version.Dpkg},
			Package: "src" + strconv.Itoa(src), Ranges: []osv.Range{{Introduced: "0", Fixed: ver(src, 1+rng.IntN(versions-1))}}}}}
}

type apiFleet struct {
	svc     *vulnstore.Service
	srv     *httptest.Server
	digests []string
	hosts   int
	advs    int
	next    atomic.Int64 // next synthetic inventory for the upload benchmark
	newHost atomic.Int64
}

var (
	fleetOnce sync.Once
	fleet     *apiFleet
)

func percentile(ds []time.Duration, p float64) time.Duration {
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(float64(len(ds))*p))]
}

func loadFleet(b *testing.B) *apiFleet {
	fleetOnce.Do(func() {
		hosts, invs := envInt("VIGIL_VULN_API_HOSTS", 100_000), envInt("VIGIL_VULN_API_INVENTORIES", 1000)
		advs := envInt("VIGIL_VULN_API_ADVISORIES", 5000)
		dir, err := os.MkdirTemp("", "vulnstore-bench")
		if err != nil {
			b.Fatal(err)
		}
		svc, err := vulnstore.Open(vulnstore.Config{Dir: dir})
		if err != nil {
			b.Fatal(err)
		}
		list := make([]*osv.Advisory, advs)
		for i := range list {
			list[i] = synthAdvisory(i)
		}
		svc.Index().AddAdvisories(list)
		f := &apiFleet{svc: svc, hosts: hosts, advs: advs}
		start := time.Now()
		f.digests = make([]string, invs)
		var wg sync.WaitGroup
		var nextInv atomic.Int64
		for range 8 { // concurrent uploads: bbolt batches their writes
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(nextInv.Add(1) - 1); i < invs; i = int(nextInv.Add(1) - 1) {
					inv := synthInventory(i)
					ans, err := svc.Ingest(&ingest.Upload{Host: "host-" + strconv.Itoa(i), Digest: inv.Digest(), Inventory: inv})
					if err != nil {
						panic(err)
					}
					f.digests[i] = ans.Digest
				}
			}()
		}
		wg.Wait()
		ingestDur := time.Since(start)
		start = time.Now()
		var nextHost atomic.Int64
		nextHost.Store(int64(invs))
		for range 256 { // concurrent hosts: bbolt batches their writes
			wg.Add(1)
			go func() {
				defer wg.Done()
				for h := nextHost.Add(1) - 1; h < int64(hosts); h = nextHost.Add(1) - 1 {
					if _, err := svc.Digest(ingest.DigestReport{Host: "host-" + strconv.Itoa(int(h)), Digest: f.digests[int(h)%invs]}); err != nil {
						panic(err)
					}
				}
			}()
		}
		wg.Wait()
		hostDur := time.Since(start)
		f.next.Store(int64(invs))
		f.srv = httptest.NewServer(httpapi.New(httpapi.Options{Anonymous: &auth.Identity{Name: "bench", Role: auth.Admin},
			Vuln: &httpapi.VulnOptions{Service: svc}}))
		st := svc.Stats().Index
		fmt.Fprintf(os.Stderr, "api fleet: %d hosts, %d inventories of %d packages, %d advisories, %d hits; %d inventories ingested in-process by 8 goroutines in %v (%.0f/s), %d new hosts' digests in %v (%.0f/s)\n",
			st.Hosts, st.Inventories, pkgs, st.Advisories, st.Hits, invs, ingestDur.Round(time.Millisecond), float64(invs)/ingestDur.Seconds(),
			hosts-invs, hostDur.Round(time.Millisecond), float64(hosts-invs)/hostDur.Seconds())
		fleet = f
	})
	return fleet
}

func get(b *testing.B, url string) int {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("GET %s: %s", url, resp.Status)
	}
	return int(n)
}

func post(b *testing.B, c *http.Client, url string, body []byte, gz bool) {
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	if gz {
		req.Header.Set("Content-Encoding", "gzip")
	}
	resp, err := c.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("POST %s: %s %s", url, resp.Status, data)
	}
}

// cpu is the process's user+system CPU time (client and server: they
// share the process), steadier than wall time on a shared machine.
func cpu() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// query runs GETs of url(i) and reports latency percentiles, CPU per
// query and the answer's size.
func query(b *testing.B, url func(i int) string) {
	lat := make([]time.Duration, 0, b.N)
	size := 0
	c0 := cpu()
	for i := 0; b.Loop(); i++ {
		t := time.Now()
		size += get(b, url(i))
		lat = append(lat, time.Since(t))
	}
	b.ReportMetric(float64((cpu()-c0).Microseconds())/1000/float64(len(lat)), "cpu_ms/op")
	b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99_ms")
	b.ReportMetric(float64(size)/float64(len(lat))/1024, "KiB/resp")
}

// BenchmarkAPI: query latency over HTTP with the fleet loaded. CVE → hosts
// with limit=1000 is what `vigilctl vuln hosts` asks by default (the count
// is always the full one); "All" returns every affected host name, so its
// time grows with the answer (up to the whole fleet).
func BenchmarkAPI(b *testing.B) {
	f := loadFleet(b)
	cve := func(i int) int { return (i * 7919) % f.advs }
	b.Run("CVEToHosts", func(b *testing.B) {
		query(b, func(i int) string { return fmt.Sprintf("%s/v1/vuln/cves/CVE-2024-%05d?limit=1000", f.srv.URL, cve(i)) })
	})
	b.Run("CVEToHostsAll", func(b *testing.B) {
		query(b, func(i int) string { return fmt.Sprintf("%s/v1/vuln/cves/CVE-2024-%05d", f.srv.URL, cve(i)) })
	})
	b.Run("HostReport", func(b *testing.B) {
		query(b, func(i int) string { return fmt.Sprintf("%s/v1/vuln/hosts/host-%d", f.srv.URL, (i*7919)%f.hosts) })
	})
	b.Run("Top20", func(b *testing.B) {
		query(b, func(int) string { return f.srv.URL + "/v1/vuln/top?n=20" })
	})
}

// BenchmarkIngest: throughput of the ingest routes over HTTP with the
// fleet loaded, from 8 concurrent clients. Upload: a new 1,000-package
// inventory each (gzip, digest checked, on disk, indexed and matched).
// DigestKnown: a host re-reporting its digest (no write). DigestNewHost: a
// new host with a stored digest (one bbolt write, batched).
func BenchmarkIngest(b *testing.B) {
	f := loadFleet(b)
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.Run("Upload", func(b *testing.B) {
		// Bodies are made beforehand: the host compresses, not the server.
		bodies := make([][]byte, b.N)
		for i := range bodies {
			n := int(f.next.Add(1))
			inv := synthInventory(n)
			raw, _ := json.Marshal(ingest.Upload{Host: "up-" + strconv.Itoa(n), Digest: inv.Digest(), Inventory: inv})
			var zb bytes.Buffer
			zw := gzip.NewWriter(&zb)
			zw.Write(raw)
			zw.Close()
			bodies[i] = zb.Bytes()
		}
		var i atomic.Int64
		b.SetParallelism(4) // 8 clients on 2 cores
		b.ResetTimer()
		c0 := cpu()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				post(b, c, f.srv.URL+"/v1/vuln/inventory", bodies[i.Add(1)-1], true)
			}
		})
		b.ReportMetric(float64((cpu()-c0).Microseconds())/1000/float64(b.N), "cpu_ms/op")
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "inventories/s")
	})
	b.Run("DigestKnown", func(b *testing.B) {
		var i atomic.Int64
		b.SetParallelism(4)
		c0 := cpu()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				h := int(i.Add(1)) % f.hosts
				body, _ := json.Marshal(ingest.DigestReport{Host: "host-" + strconv.Itoa(h), Digest: f.digests[h%len(f.digests)]})
				post(b, c, f.srv.URL+"/v1/vuln/digest", body, false)
			}
		})
		b.ReportMetric(float64((cpu()-c0).Microseconds())/1000/float64(b.N), "cpu_ms/op")
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "digests/s")
	})
	b.Run("DigestNewHost", func(b *testing.B) {
		b.SetParallelism(4)
		c0 := cpu()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				h := int(f.newHost.Add(1))
				body, _ := json.Marshal(ingest.DigestReport{Host: "new-" + strconv.Itoa(h), Digest: f.digests[h%len(f.digests)]})
				post(b, c, f.srv.URL+"/v1/vuln/digest", body, false)
			}
		})
		b.ReportMetric(float64((cpu()-c0).Microseconds())/1000/float64(b.N), "cpu_ms/op")
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "digests/s")
	})
}
