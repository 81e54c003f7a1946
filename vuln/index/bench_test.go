package index_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/vuln/index"
	"github.com/vigil-hids/vigil/vuln/inventory"
	"github.com/vigil-hids/vigil/vuln/osv"
	"github.com/vigil-hids/vigil/vuln/version"
)

// The synthetic fleet's size. The figure is 1,000,000 hosts over
// 5,000 inventories of 1,000 packages; plain `go test -bench` runs a
// small fleet, bench/vulnscan/run.sh sets the full size:
//
//	VIGIL_VULN_HOSTS=1000000 VIGIL_VULN_INVENTORIES=5000 go test -bench Fleet ./vuln/index
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

type synth struct {
	hosts, invs, pkgs, advs int
	names                   int // binary package names in the universe
	rng                     *rand.Rand
}

const versionsPerSource = 8

func (s *synth) version(src, v int, release string) string {
	return fmt.Sprintf("%d.%d.%d-%d+deb%su%d", 1+src%7, src%13, v, 1+v%3, release, v)
}

// inventory i: 80% of its packages come from a base every host has, the
// rest are drawn from the whole universe; three binaries share a source
// and its version.
func (s *synth) inventory(i int) *inventory.Inventory {
	rng := rand.New(rand.NewPCG(uint64(i), 42))
	release := "12"
	if i%5 == 0 {
		release = "11"
	}
	inv := &inventory.Inventory{Ecosystem: "dpkg", OS: inventory.OS{ID: "debian", VersionID: release}}
	base := s.pkgs * 8 / 10
	chosen := make(map[int]bool, s.pkgs)
	for n := range base {
		chosen[n] = true
	}
	for len(chosen) < s.pkgs {
		chosen[base+rng.IntN(s.names-base)] = true
	}
	names := make([]int, 0, len(chosen))
	for n := range chosen {
		names = append(names, n)
	}
	slices.Sort(names) // map order is random; the fleet must not be
	srcVer := map[int]int{}
	for _, n := range names {
		src := n / 3
		v, ok := srcVer[src]
		if !ok { // most hosts are fairly up to date, one source in ten is old
			v = versionsPerSource/2 + rng.IntN(versionsPerSource/2)
			if rng.IntN(10) == 0 {
				v = rng.IntN(versionsPerSource)
			}
			srcVer[src] = v
		}
		ver := s.version(src, v, release)
		inv.Packages = append(inv.Packages, inventory.Package{
			Name: "pkg" + strconv.Itoa(n), Version: ver, Arch: "amd64", Source: "src" + strconv.Itoa(src),
		})
	}
	return inv
}

func (s *synth) advisory(i int) *osv.Advisory {
	rng := rand.New(rand.NewPCG(uint64(i), 7))
	src := rng.IntN(s.names / 3)
	if rng.IntN(2) == 0 { // half of them on the base every host has
		src = rng.IntN(s.pkgs * 8 / 10 / 3)
	}
	fixed := 1 + rng.IntN(versionsPerSource-1)
	cve := fmt.Sprintf("CVE-2024-%05d", i)
	a := &osv.Advisory{ID: "DEBIAN-" + cve, CVEs: []string{cve}, Severity: osv.Severity{Level: osv.Level(1 + rng.IntN(4))}}
	for _, rel := range []string{"12", "11"} {
		a.Affected = append(a.Affected, osv.Affected{
			Ecosystem: osv.Ecosystem{Distro: "debian", Release: rel, Kind: version.Dpkg},
			Package:   "src" + strconv.Itoa(src),
			Ranges:    []osv.Range{{Introduced: "0", Fixed: s.version(src, fixed, rel)}},
		})
	}
	return a
}

type builtFleet struct {
	x        *index.Index
	s        *synth
	buildDur time.Duration
	heapMB   float64
}

var (
	fleetOnce sync.Once
	theFleet  *builtFleet
)

func benchFleet(b *testing.B) *builtFleet {
	fleetOnce.Do(func() {
		s := &synth{
			hosts: envInt("VIGIL_VULN_HOSTS", 20_000), invs: envInt("VIGIL_VULN_INVENTORIES", 100),
			pkgs: envInt("VIGIL_VULN_PACKAGES", 1000), advs: envInt("VIGIL_VULN_ADVISORIES", 20_000),
		}
		s.names = s.pkgs * 4
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		x := index.New()
		advs := make([]*osv.Advisory, s.advs)
		for i := range advs {
			advs[i] = s.advisory(i)
		}
		x.AddAdvisories(advs)
		digests := make([]string, s.invs)
		for i := range digests {
			d, _, err := x.AddInventory(s.inventory(i))
			if err != nil {
				b.Fatal(err)
			}
			digests[i] = d
		}
		for h := range s.hosts {
			if err := x.SetHost("host-"+strconv.Itoa(h), digests[h%len(digests)]); err != nil {
				b.Fatal(err)
			}
		}
		dur := time.Since(start)
		digests = nil
		runtime.GC()
		runtime.ReadMemStats(&after)
		theFleet = &builtFleet{x: x, s: s, buildDur: dur, heapMB: float64(after.HeapAlloc-before.HeapAlloc) / (1 << 20)}
		st := x.Stats()
		fmt.Fprintf(os.Stderr, "fleet: %d hosts, %d inventories of %d packages, %d advisories, %d hits; built in %v; index heap %.0f MB\n",
			st.Hosts, st.Inventories, s.pkgs, st.Advisories, st.Hits, dur.Round(time.Millisecond), theFleet.heapMB)
	})
	return theFleet
}

func percentile(ds []time.Duration, p float64) time.Duration {
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(float64(len(ds))*p))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkFleet reports the figures over the synthetic fleet:
// the index's heap, CVE → hosts latency (p50, p99), the ingest of a new
// inventory, and the whole-fleet re-match after an advisory import.
func BenchmarkFleet(b *testing.B) {
	f := benchFleet(b)
	b.Run("CVEToHosts", func(b *testing.B) {
		var (
			ds    []time.Duration
			hosts int
			i     int
		)
		for b.Loop() {
			cve := fmt.Sprintf("CVE-2024-%05d", i%f.s.advs)
			i++
			start := time.Now()
			c, err := f.x.HostsForCVE(cve)
			ds = append(ds, time.Since(start))
			if err != nil {
				b.Fatal(err)
			}
			hosts += c.HostCount
		}
		b.ReportMetric(float64(hosts)/float64(len(ds)), "hosts/query")
		b.ReportMetric(ms(percentile(ds, 0.5)), "p50_ms")
		b.ReportMetric(ms(percentile(ds, 0.99)), "p99_ms")
		b.ReportMetric(f.heapMB, "index_MB")
		b.ReportMetric(f.buildDur.Seconds(), "build_s")
	})
	b.Run("HostReport", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := f.x.CVEsForHost("host-" + strconv.Itoa(i%f.s.hosts)); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("IngestNewInventory", func(b *testing.B) {
		var ds []time.Duration
		n := 0
		for b.Loop() {
			b.StopTimer()
			inv := f.s.inventory(1_000_000 + f.s.invs + n) // a digest the index has not seen
			n++
			b.StartTimer()
			start := time.Now()
			if _, added, err := f.x.AddInventory(inv); err != nil || !added {
				b.Fatalf("ingest: %v, added %t", err, added)
			}
			ds = append(ds, time.Since(start))
		}
		b.ReportMetric(ms(percentile(ds, 0.5)), "p50_ms")
		b.ReportMetric(ms(percentile(ds, 0.99)), "p99_ms")
	})
	b.Run("RematchAfterImport", func(b *testing.B) {
		n := 0
		for b.Loop() {
			a := f.s.advisory(f.s.advs + n) // one new advisory; the whole fleet is re-matched
			n++
			f.x.AddAdvisories([]*osv.Advisory{a})
		}
	})
	b.Run("Top", func(b *testing.B) {
		for b.Loop() {
			if len(f.x.Top(20)) == 0 {
				b.Fatal("no CVE in the top")
			}
		}
	})
}
