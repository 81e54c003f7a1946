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
	"syscall"
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
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		fmt.Fprintln(os.Stderr, "getrusage:", err)
		os.Exit(1)
	}
	fmt.Printf("%-10s %-12s %-12s %-12s %s\n", "packages", "median", "max", "peak_rss", "digest")
	fmt.Printf("%-10d %-12s %-12s %-12s %s\n", pkgs, times[len(times)/2].Round(time.Microsecond),
		times[len(times)-1].Round(time.Microsecond), fmt.Sprintf("%.1fMB", float64(ru.Maxrss)/1024), dig)
}
