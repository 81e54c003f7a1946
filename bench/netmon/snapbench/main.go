// Command snapbench measures netmon against ss from iproute2 on the
// sockets of the network namespace it runs in (bench/netmon/run.sh sets
// one up with holder). It prints a table.
//
//	snapbench -mode compare -reps 7   # ss -tan, ss -tanp and netmon snapshots
//	snapbench -mode run -duration 60s # the plugin loop: CPU share and RSS
//	snapbench -mode plugin -plugin ./vigil-netmon -duration 60s
//	                                  # the real plugin process, launched the
//	                                  # way vigil-host does: its RSS and CPU
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"

	"github.com/vigil-hids/vigil/plugins/netmon"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

func main() {
	mode := flag.String("mode", "compare", "compare or run")
	reps := flag.Int("reps", 7, "repetitions per measurement (compare)")
	duration := flag.Duration("duration", 60*time.Second, "run time (run)")
	interval := flag.Duration("interval", 5*time.Second, "snapshot interval (run)")
	attribution := flag.Bool("attribution", true, "attribute sockets to processes (run)")
	budget := flag.Duration("budget", netmon.DefaultSnapshotBudget, "snapshot CPU budget (run)")
	pluginPath := flag.String("plugin", "", "vigil-netmon binary (plugin)")
	pluginConfig := flag.String("config", "", "extra config keys for the plugin, a JSON object without braces, e.g. '\"snapshot_budget\": \"1m\"' (plugin)")
	profile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *profile != "" {
		f, err := os.Create(*profile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	switch *mode {
	case "compare":
		compare(*reps)
	case "tan":
		compareTan(*reps)
	case "loop":
		loop(*reps)
	case "run":
		run(*duration, *interval, *attribution, *budget)
	case "plugin":
		runPlugin(*pluginPath, *pluginConfig, *duration, *interval)
	default:
		log.Fatalf("unknown mode %q", *mode)
	}
}

// sink is an sdk.Emitter that encodes events as the SDK does and
// discards them.
type sink struct {
	mu       sync.Mutex
	buf      []byte
	n        int
	counters map[string]*sdk.Counter
}

func newSink() *sink { return &sink{counters: map[string]*sdk.Counter{}} }

func (s *sink) Emit(ev *sdk.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = sdk.AppendEventRecord(s.buf[:0], ev, time.Now().UnixNano())
	s.n++
	return nil
}

func (s *sink) Counter(name string) *sdk.Counter {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.counters[name]
	if !ok {
		c = &sdk.Counter{}
		s.counters[name] = c
	}
	return c
}

type sample struct{ wall, cpu time.Duration }

type series []sample

func (s series) median() sample {
	w := make([]time.Duration, len(s))
	c := make([]time.Duration, len(s))
	for i, x := range s {
		w[i], c[i] = x.wall, x.cpu
	}
	slices.Sort(w)
	slices.Sort(c)
	return sample{w[len(w)/2], c[len(c)/2]}
}

func (s series) min() sample {
	m := s[0]
	for _, x := range s[1:] {
		if x.wall < m.wall {
			m = x
		}
	}
	return m
}

// ss runs ss with args, output discarded, and returns its wall and CPU time.
func ss(args ...string) sample {
	cmd := exec.Command("ss", args...)
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		log.Fatal(err)
	}
	defer devnull.Close()
	cmd.Stdout = devnull
	t := time.Now()
	if err := cmd.Run(); err != nil {
		log.Fatalf("ss %s: %v", strings.Join(args, " "), err)
	}
	wall := time.Since(t)
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return sample{wall, time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
}

func config(attribution bool) *netmon.Config {
	cfg := netmon.DefaultConfig()
	cfg.UDP = false // ss -tan lists TCP only
	// ss -tan lists its own network namespace only.
	cfg.AllNamespaces = false
	cfg.SnapshotBudget = sdk.Duration(time.Minute)
	cfg.AttributionFDs = 0
	if attribution {
		cfg.AttributionFDs = 10_000_000
	}
	if err := cfg.Validate(); err != nil {
		log.Fatal(err)
	}
	return cfg
}

func snapshot(m *netmon.Monitor) (sample, netmon.Stats) {
	t := time.Now()
	st, err := m.Snapshot()
	if err != nil {
		log.Fatalf("snapshot: %v", err)
	}
	if st.Truncated {
		log.Fatalf("snapshot truncated: %+v", st)
	}
	return sample{time.Since(t), st.CPU}, st
}

func newMonitor(attribution bool) *netmon.Monitor {
	m, err := netmon.NewMonitor(config(attribution), nil, sdk.SystemClock(), newSink())
	if err != nil {
		log.Fatal(err)
	}
	return m
}

// compare alternates each ss run with the netmon snapshots it is compared
// with, so both see the same load on a shared machine.
func compare(reps int) {
	var ssTan, ssTanp, cold, warm, coldAttr, warmAttr series
	steady := newMonitor(false)
	defer steady.Close()
	_, plain := snapshot(steady)
	for range reps {
		ssTan = append(ssTan, ss("-tan"))
		s, _ := snapshot(steady)
		warm = append(warm, s)
		m := newMonitor(false)
		s, _ = snapshot(m)
		cold = append(cold, s)
		m.Close()
	}
	steadyAttr := newMonitor(true)
	defer steadyAttr.Close()
	_, attr := snapshot(steadyAttr)
	for range reps {
		ssTanp = append(ssTanp, ss("-tanp"))
		s, _ := snapshot(steadyAttr)
		warmAttr = append(warmAttr, s)
		m := newMonitor(true)
		s, st := snapshot(m)
		coldAttr = append(coldAttr, s)
		attr = st
		m.Close()
	}
	fmt.Printf("sockets in the dump: %d (listeners %d) at the start; %d with attribution at the end, which scanned %d processes and left %d new sockets unattributed\n",
		plain.Sockets, plain.Listeners, attr.Sockets, attr.Scanned, attr.Misses)
	fmt.Printf("%-48s %12s %12s %12s\n", fmt.Sprintf("measurement (%d runs, alternated)", reps), "median wall", "min wall", "median cpu")
	row := func(name string, s series) {
		md, mn := s.median(), s.min()
		fmt.Printf("%-48s %12s %12s %12s\n", name, ms(md.wall), ms(mn.wall), ms(md.cpu))
	}
	row("ss -tan > /dev/null", ssTan)
	row("netmon snapshot (steady)", warm)
	row("netmon snapshot, first of a new monitor", cold)
	row("ss -tanp > /dev/null", ssTanp)
	row("netmon + attribution (steady, incremental)", warmAttr)
	row("netmon + attribution, first (full /proc walk)", coldAttr)
	fmt.Printf("netmon steady / ss -tan: median wall %.2f, min wall %.2f, median cpu %.2f (target <= 0.50)\n",
		ratio(warm, ssTan), minRatio(warm, ssTan), cpuRatio(warm, ssTan))
	fmt.Printf("netmon first / ss -tan: median wall %.2f, min wall %.2f, median cpu %.2f\n",
		ratio(cold, ssTan), minRatio(cold, ssTan), cpuRatio(cold, ssTan))
	fmt.Printf("netmon+attribution first / ss -tanp: median wall %.2f, min wall %.2f, median cpu %.2f (target <= 1.00)\n",
		ratio(coldAttr, ssTanp), minRatio(coldAttr, ssTanp), cpuRatio(coldAttr, ssTanp))
	fmt.Printf("netmon+attribution steady / ss -tanp: median wall %.2f, min wall %.2f, median cpu %.2f\n",
		ratio(warmAttr, ssTanp), minRatio(warmAttr, ssTanp), cpuRatio(warmAttr, ssTanp))
}

// compareTan alternates ss -tan with steady netmon snapshots (no
// attribution, TCP only, like ss -tan) and reports median and spread.
func compareTan(reps int) {
	var ssTan, warm series
	steady := newMonitor(false)
	defer steady.Close()
	_, plain := snapshot(steady)
	_ = ss("-tan") // warm
	var ratios []float64
	for range reps {
		a := ss("-tan")
		b, _ := snapshot(steady)
		ssTan, warm = append(ssTan, a), append(warm, b)
		ratios = append(ratios, float64(b.cpu)/float64(a.cpu))
	}
	slices.Sort(ratios)
	fmt.Printf("sockets in the dump: %d (listeners %d)\n", plain.Sockets, plain.Listeners)
	fmt.Printf("%-34s %11s %11s %11s %11s %11s\n", fmt.Sprintf("measurement (%d runs, alternated)", reps), "median wall", "min wall", "median cpu", "min cpu", "max cpu")
	row := func(name string, s series) {
		md, mn := s.median(), s.min()
		fmt.Printf("%-34s %11s %11s %11s %11s %11s\n", name, ms(md.wall), ms(mn.wall), ms(md.cpu), ms(s.minCPU()), ms(s.maxCPU()))
	}
	row("ss -tan > /dev/null", ssTan)
	row("netmon snapshot (steady)", warm)
	fmt.Printf("netmon / ss -tan: median wall %.2f, min wall %.2f, median cpu %.2f, min cpu %.2f; per-pair cpu ratios min %.2f median %.2f max %.2f (target <= 0.50)\n",
		ratio(warm, ssTan), minRatio(warm, ssTan), cpuRatio(warm, ssTan), float64(warm.minCPU())/float64(ssTan.minCPU()),
		ratios[0], ratios[len(ratios)/2], ratios[len(ratios)-1])
}

// loop takes reps steady snapshots without attribution (for profiling).
func loop(reps int) {
	m := newMonitor(false)
	defer m.Close()
	var s series
	for range reps {
		x, _ := snapshot(m)
		s = append(s, x)
	}
	md := s.median()
	fmt.Printf("%d snapshots: median wall %s, median cpu %s, min cpu %s\n", reps, ms(md.wall), ms(md.cpu), ms(s.minCPU()))
}

func (s series) minCPU() time.Duration {
	m := s[0].cpu
	for _, x := range s[1:] {
		m = min(m, x.cpu)
	}
	return m
}

func (s series) maxCPU() time.Duration {
	m := s[0].cpu
	for _, x := range s[1:] {
		m = max(m, x.cpu)
	}
	return m
}

func minRatio(a, b series) float64 { return float64(a.min().wall) / float64(b.min().wall) }

func cpuRatio(a, b series) float64 { return float64(a.median().cpu) / float64(b.median().cpu) }

func ratio(a, b series) float64 { return float64(a.median().wall) / float64(b.median().wall) }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

func cpuNow() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// run runs the plugin's loop (snapshot, then wait as Pace says) for
// duration and reports the CPU share after the first snapshot and the RSS.
func run(duration, interval time.Duration, attribution bool, budget time.Duration) {
	cfg := config(attribution)
	cfg.SnapshotBudget = sdk.Duration(budget)
	if attribution {
		cfg.AttributionFDs = netmon.DefaultAttributionFDs
	}
	cfg.Interval = sdk.Duration(interval)
	em := newSink()
	m, err := netmon.NewMonitor(cfg, nil, sdk.SystemClock(), em)
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	fmt.Printf("established sockets before the run (ss -Htan state established): %d\n", established())
	start := time.Now()
	st, err := m.Snapshot()
	if err != nil {
		log.Fatal(err)
	}
	first := st
	wait := m.Pace(st)
	cpu0, t0 := cpuNow(), time.Now()
	snaps, truncated := 0, 0
	var maxCPU time.Duration
	var cpus series
	for time.Since(start) < duration {
		time.Sleep(wait)
		if st, err = m.Snapshot(); err != nil {
			log.Fatal(err)
		}
		snaps++
		if st.Truncated {
			truncated++
		}
		maxCPU = max(maxCPU, st.CPU)
		cpus = append(cpus, sample{st.Wall, st.CPU})
		wait = m.Pace(st)
	}
	cpu, wall := cpuNow()-cpu0, time.Since(t0)
	rss, hwm := status("VmRSS"), status("VmHWM")
	fmt.Printf("run: %d sockets, attribution %t, interval %s, snapshot budget %s, %s\n", st.Sockets, attribution, interval, budget, duration)
	fmt.Printf("first snapshot: %d sockets, wall %s cpu %s, scanned %d processes, %d unattributed, truncated %t\n", first.Sockets, ms(first.Wall), ms(first.CPU), first.Scanned, first.Misses, first.Truncated)
	fmt.Printf("steady: %d snapshots in %s, max snapshot cpu %s, truncated %d, last interval %s\n", snaps, wall.Round(time.Millisecond), ms(maxCPU), truncated, wait)
	if len(cpus) > 0 {
		md := cpus.median()
		fmt.Printf("steady snapshot: median cpu %s, wall %s = %.3f%% of one core at a fixed %s interval\n",
			ms(md.cpu), ms(md.wall), 100*float64(md.cpu)/float64(interval), interval)
	}
	fmt.Printf("steady process CPU: %s over %s = %.3f%% of one core (target <= 1%% at 10,000 connections)\n",
		cpu.Round(time.Millisecond), wall.Round(time.Millisecond), 100*float64(cpu)/float64(wall))
	fmt.Printf("established sockets after the run: %d\n", established())
	fmt.Printf("RSS now %s, peak (VmHWM) %s (target <= 30 MB at 100,000 connections); events emitted %d\n", rss, hwm, em.n)
}

// established counts the established TCP sockets with ss, reading its
// output in small pieces so the count does not inflate this process's RSS.
func established() int {
	cmd := exec.Command("ss", "-Htan", "state", "established")
	out, err := cmd.StdoutPipe()
	if err != nil {
		log.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		log.Fatalf("ss: %v", err)
	}
	n := 0
	buf := make([]byte, 32<<10)
	for {
		k, err := out.Read(buf)
		n += bytes.Count(buf[:k], []byte{'\n'})
		if err != nil {
			break
		}
	}
	if err := cmd.Wait(); err != nil {
		log.Fatalf("ss: %v", err)
	}
	return n
}

func status(key string) string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// runPlugin launches the plugin binary through go-plugin over gRPC as the
// host does, configures it, reads its event stream for duration and
// reports the plugin process's CPU share and RSS.
func runPlugin(path, extra string, duration, interval time.Duration) {
	if path == "" {
		log.Fatal("-plugin is required")
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: sdk.PluginSets(&sdk.GRPCPlugin{}),
		Cmd:              exec.Command(path),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr}),
	})
	defer client.Kill()
	rpc, err := client.Client()
	if err != nil {
		log.Fatalf("starting plugin: %v", err)
	}
	raw, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		log.Fatal(err)
	}
	pc := raw.(pluginpb.PluginClient)
	pid := client.ReattachConfig().Pid
	ctx, cancel := context.WithTimeout(context.Background(), duration+time.Minute)
	defer cancel()
	cfg := fmt.Sprintf(`{"interval": %q}`, interval)
	if extra != "" {
		cfg = fmt.Sprintf(`{"interval": %q, %s}`, interval, extra)
	}
	fmt.Printf("plugin config: %s\n", cfg)
	if _, err := pc.Configure(ctx, &pluginpb.ConfigureRequest{Config: []byte(cfg), LogLevel: "warn"}); err != nil {
		log.Fatalf("configure: %v", err)
	}
	stream, err := pc.Run(ctx, &pluginpb.RunRequest{})
	if err != nil {
		log.Fatal(err)
	}
	var events, batches uint64
	var counters map[string]uint64
	var cpu0 time.Duration
	var t0 time.Time
	start := time.Now()
	for time.Since(start) < duration {
		b, err := stream.Recv()
		if err != nil {
			log.Fatalf("run stream: %v", err)
		}
		batches++
		events += uint64(b.Count)
		counters = b.Counters
		if t0.IsZero() && counters[netmon.CounterSnapshots] >= 1 {
			cpu0, t0 = procCPU(pid), time.Now() // steady from the first snapshot on
		}
	}
	cpu, wall := procCPU(pid)-cpu0, time.Since(t0)
	rss, hwm := procStatus(pid, "VmRSS"), procStatus(pid, "VmHWM")
	fmt.Printf("plugin process %d: %d snapshots, %d events in %d batches, last snapshot %d sockets, %d µs cpu\n",
		pid, counters[netmon.CounterSnapshots], events, batches, counters[netmon.CounterSockets], counters[netmon.CounterSnapshotCPU])
	fmt.Printf("plugin CPU after the first snapshot: %s over %s = %.3f%% of one core\n",
		cpu.Round(time.Millisecond), wall.Round(time.Millisecond), 100*float64(cpu)/float64(wall))
	fmt.Printf("plugin RSS now %s, peak (VmHWM) %s; counters %v\n", rss, hwm, counters)
	_, _ = pc.Shutdown(context.Background(), &pluginpb.ShutdownRequest{DeadlineUnixNano: time.Now().Add(5 * time.Second).UnixNano()})
}

// procCPU returns utime+stime of pid from /proc/PID/stat.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

func procStatus(pid int, key string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}
