// Command collect measures what one vulnscan inventory collection costs
// on this machine: it collects and digests the inventory under -root
// -n times and prints the package count, the wall time per collection
// (median and max) and the process's peak RSS, which is what the plugin
// process would hold for collection.
package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-hids/vigil/plugins/vulnscan/collect"
)

func main() {
	root := flag.String("root", "/", "root path to collect under")
	n := flag.Int("n", 20, "collections to time")
	flag.Parse()
	var (
		times []time.Duration
		pkgs  int
		dig   string
	)
	for range *n {
		start := time.Now()
		s, err := collect.Collect(*root)
		if err != nil {
			fmt.Fprintln(os.Stderr, "collect:", err)
			os.Exit(1)
		}
		dig = s.Inventory.Digest()
		times = append(times, time.Since(start))
		pkgs = len(s.Inventory.Packages)
	}
	slices.Sort(times)
	hwm, err := peakRSS()
	if err != nil {
		fmt.Fprintln(os.Stderr, "peak rss:", err)
		os.Exit(1)
	}
	fmt.Printf("%-10s %-12s %-12s %-12s %s\n", "packages", "median", "max", "peak_rss", "digest")
	fmt.Printf("%-10d %-12s %-12s %-12s %s\n", pkgs, times[len(times)/2].Round(time.Microsecond),
		times[len(times)-1].Round(time.Microsecond), fmt.Sprintf("%.1fMB", float64(hwm)/1024), dig)
}

// peakRSS returns VmHWM in kB from /proc/self/status. Unlike getrusage's
// ru_maxrss it is reset by execve, so `go run` does not report the go
// command's own footprint.
func peakRSS() (int, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/self/status")
}
