package registry

import (
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
)

// BenchmarkIndexMemory decodes 100,000 registrations as the index keeps
// them and reports the heap each host costs, without and with the release
// versions and update states rollout status reads (three plugins and the
// host's own version per host). Every host reports its platform (a
// quarter linux/arm64, the rest linux/amd64).
func BenchmarkIndexMemory(b *testing.B) {
	const hosts = 100_000
	for _, withReleases := range []bool{false, true} {
		b.Run(fmt.Sprintf("releases=%v", withReleases), func(b *testing.B) {
			vals := make([][]byte, hosts)
			for i := range vals {
				arch := "amd64"
				if i%4 == 0 {
					arch = "arm64"
				}
				r := api.Registration{Host: fmt.Sprintf("host-%06d", i), OS: "linux", Arch: arch,
					Labels: map[string]string{"idc": fmt.Sprint("dc", i%8), "env": "prod", "group": fmt.Sprint("g", i%50), "product": "web"}}
				if withReleases {
					r.Version = "1.0.0"
					r.Plugins = map[string]api.PluginStatus{}
					for _, p := range []string{"procmon", "netmon", "vulnscan"} {
						r.Plugins[p] = api.PluginStatus{Version: "1.2.3", State: "running",
							Update: &api.UpdateStatus{Target: "1.2.3", State: api.UpdateInstalled, At: time.Now()}}
					}
				}
				vals[i], _ = json.Marshal(r)
			}
			names := make([]string, hosts)
			for i := range names {
				names[i] = fmt.Sprintf("host-%06d", i)
			}
			b.ResetTimer()
			var perHost float64
			var decoding time.Duration
			for n := 0; n < b.N; n++ {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				m := make(map[string]Host, hosts)
				start := time.Now()
				for i, v := range vals {
					m[names[i]] = decode(names[i], v)
				}
				decoding += time.Since(start)
				runtime.GC()
				runtime.ReadMemStats(&after)
				perHost = float64(after.HeapAlloc-before.HeapAlloc) / hosts
				runtime.KeepAlive(m)
			}
			b.ReportMetric(perHost, "heap-B/host")
			b.ReportMetric(float64(decoding.Nanoseconds())/float64(b.N*hosts), "ns/decode")
		})
	}
}

// BenchmarkDecode is the cost of one registration event in the index,
// with three plugins reporting versions and update states.
func BenchmarkDecode(b *testing.B) {
	r := api.Registration{Host: "host-000001", Version: "1.0.0", OS: "linux", Arch: "amd64",
		Labels: map[string]string{"idc": "dc1", "env": "prod", "group": "g1", "product": "web"}, Plugins: map[string]api.PluginStatus{}}
	for _, p := range []string{"procmon", "netmon", "vulnscan"} {
		r.Plugins[p] = api.PluginStatus{Version: "1.2.3", State: "running",
			Update: &api.UpdateStatus{Target: "1.2.3", State: api.UpdateInstalled, At: time.Now()}}
	}
	v, _ := json.Marshal(r)
	b.ReportAllocs()
	for b.Loop() {
		decode("host-000001", v)
	}
}
