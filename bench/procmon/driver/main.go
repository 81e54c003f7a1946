// Command driver runs one procmon benchmark: it starts the real
// vigil-procmon binary the way vigil-host does (go-plugin over gRPC) and
// forkstat side by side, runs the storm generator against both, and prints
// what each captured, procmon's loss counters, and procmon's CPU and RSS.
// run.sh builds everything and calls it once per rate.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"

	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

var (
	pluginPath = flag.String("plugin", "", "vigil-procmon binary")
	stormPath  = flag.String("storm", "", "storm generator binary")
	target     = flag.String("target", "", "exec target of the storm (its path must be unique to the run)")
	rate       = flag.Float64("rate", 5000, "execs per second asked of the storm")
	duration   = flag.Duration("duration", 20*time.Second, "storm duration")
	workers    = flag.Int("workers", 2, "storm worker processes")
	config     = flag.String("config", "{}", "procmon config (JSON)")
	forkstat   = flag.Bool("forkstat", true, "run forkstat on the same storm")
	sample     = flag.Duration("sample", time.Second, "RSS/CPU sampling interval")
	idle       = flag.Duration("idle", 5*time.Second, "time to measure procmon on the machine's background load first")
	pin        = flag.Bool("pin", true, "pin each storm worker to a CPU")
	messages   = flag.Float64("messages", 0, "with a filler, bring the proc connector's messages to this many per second (3 per storm exec counted); 0: no filler")
	filler     = flag.String("filler", "comm", "filler kind: comm (prctl(PR_SET_NAME): one comm message), proc (vfork, rename, exit: fork, comm and exit messages, no exec) or thread")
)

// execRec is one exec event procmon emitted.
type execRec struct {
	pid     int32
	t       int64 // Unix ns
	cmdline bool  // the storm's command line was read
	exe     bool  // the storm's executable was read
}

type fsRec struct {
	pid  int32
	sec  int64 // Unix seconds (forkstat prints seconds)
	cmd  bool  // full command line of the storm
	name bool  // at least the storm's name
}

type collector struct {
	mu       sync.Mutex
	execs    []execRec
	counters map[string]uint64
	dropped  uint64
	events   uint64
}

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "driver:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "procmon-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// procmon, as vigil-host runs it.
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: sdk.PluginSets(&sdk.GRPCPlugin{}),
		Cmd:              exec.Command(*pluginPath),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Name: "bench", Level: hclog.Warn, Output: os.Stderr}),
	})
	defer client.Kill()
	rpc, err := client.Client()
	if err != nil {
		return fmt.Errorf("starting procmon: %w", err)
	}
	raw, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		return err
	}
	pc := raw.(pluginpb.PluginClient)
	if _, err := pc.Configure(ctx, &pluginpb.ConfigureRequest{Config: []byte(*config), HostName: "bench"}); err != nil {
		return fmt.Errorf("configuring procmon: %w", err)
	}
	stream, err := pc.Run(ctx, &pluginpb.RunRequest{})
	if err != nil {
		return err
	}
	pid := client.ReattachConfig().Pid
	col := &collector{}
	recvDone := make(chan error, 1)
	go func() { recvDone <- col.recv(stream) }()

	// forkstat on the same storm.
	var fs *exec.Cmd
	var fsRecs []fsRec
	fsDone := make(chan struct{})
	if *forkstat {
		fs = exec.Command("forkstat", "-e", "exec", "-l")
		out, err := fs.StdoutPipe()
		if err != nil {
			return err
		}
		if err := fs.Start(); err != nil {
			return fmt.Errorf("starting forkstat: %w", err)
		}
		go func() {
			defer close(fsDone)
			fsRecs = parseForkstat(out)
		}()
	} else {
		close(fsDone)
	}
	time.Sleep(2 * time.Second) // both subscribed
	// The machine is shared: measure procmon's CPU on the background
	// alone first, so the storm's share can be told apart.
	idle0 := col.snapshot()
	idleCPU0, _ := cpuTicks(pid)
	idleStart := time.Now()
	time.Sleep(*idle)
	idle1 := col.snapshot()
	idleCPU1, _ := cpuTicks(pid)
	idleTime := time.Since(idleStart)
	bg := background{
		cpuPct: 100 * float64(idleCPU1-idleCPU0) / 100 / idleTime.Seconds(),
		execs:  float64(idle1.counters["exec_received"]-idle0.counters["exec_received"]) / idleTime.Seconds(),
	}
	base := col.snapshot()
	cpu0, _ := cpuTicks(pid)
	usr0, sys0, _ := cpuSplit(pid)
	var fsCPU0 uint64
	if fs != nil {
		fsCPU0, _ = cpuTicks(fs.Process.Pid)
	}
	rss0, _ := rssKB(pid)
	pmDrops0 := netlinkDrops(pid)
	var fsDrops0 dropCounts
	if fs != nil {
		fsDrops0 = netlinkDrops(fs.Process.Pid)
	}

	// The storm, sampled every second.
	pidlog := filepath.Join(dir, "pids")
	args := []string{"-r", fmt.Sprint(*rate), "-d", fmt.Sprint(duration.Seconds()),
		"-t", *target, "-w", strconv.Itoa(*workers), "-o", pidlog}
	if !*pin {
		args = append(args, "-P")
	}
	if *messages > 0 {
		args = append(args, "-M", fmt.Sprint(*messages), "-f", *filler)
	}
	storm := exec.Command(*stormPath, args...)
	storm.Stderr = os.Stderr
	var stormOut strings.Builder
	storm.Stdout = &stormOut
	start := time.Now()
	if err := storm.Start(); err != nil {
		return err
	}
	stormDone := make(chan error, 1)
	go func() { stormDone <- storm.Wait() }()
	var rss, anon []uint64
	tick := time.NewTicker(*sample)
wait:
	for {
		select {
		case err := <-stormDone:
			if err != nil {
				return fmt.Errorf("storm: %w", err)
			}
			break wait
		case <-tick.C:
			if r, err := rssKB(pid); err == nil {
				rss = append(rss, r)
			}
			if r, err := statusKB(pid, "RssAnon:"); err == nil {
				anon = append(anon, r)
			}
		}
	}
	tick.Stop()
	stormTime := time.Since(start)
	cpu1, _ := cpuTicks(pid)
	usr1, sys1, _ := cpuSplit(pid)
	bg.user, bg.sys = float64(usr1-usr0)/100, float64(sys1-sys0)/100
	var fsCPU1 uint64
	if fs != nil {
		fsCPU1, _ = cpuTicks(fs.Process.Pid)
	}
	// Let both drain what is queued.
	time.Sleep(3 * time.Second)
	end := col.snapshot()
	drops := sockDrops{procmon: netlinkDrops(pid).minus(pmDrops0)}
	if fs != nil {
		drops.forkstat = netlinkDrops(fs.Process.Pid).minus(fsDrops0)
		_ = fs.Process.Signal(syscall.SIGINT)
		<-fsDone
		_ = fs.Wait()
	}
	cancel()
	<-recvDone

	gen, err := readPidlogs(pidlog, *workers)
	if err != nil {
		return err
	}
	report(gen, col, base, end, fsRecs, stormTime, stormOut.String(), cpu1-cpu0, fsCPU1-fsCPU0, rss0, rss, anon, bg, drops)
	return nil
}

func (c *collector) recv(stream pluginpb.Plugin_RunClient) error {
	var v sdk.EventView
	for {
		b, err := stream.Recv()
		if err != nil {
			return err
		}
		recs := b.Events
		var batch []execRec
		for len(recs) > 0 {
			var rec []byte
			rec, recs, err = sdk.NextRecord(recs)
			if err != nil {
				return err
			}
			if err := sdk.ParseEvent(rec, &v); err != nil {
				return err
			}
			if string(v.Type) != "exec" {
				continue
			}
			e := execRec{t: v.TimeUnixNano}
			for it := v.Fields(); it.Next(); {
				switch string(it.Key) {
				case "pid":
					e.pid = int32(it.Int)
				case "exe":
					e.exe = string(it.Str) == *target
				case "cmdline":
					e.cmdline = strings.HasPrefix(string(it.Str), *target)
				}
			}
			batch = append(batch, e)
		}
		c.mu.Lock()
		c.execs = append(c.execs, batch...)
		c.counters = b.Counters
		c.dropped = b.DroppedTotal[sdk.DropBufferFull]
		c.events = b.EmittedTotal
		c.mu.Unlock()
	}
}

type snap struct {
	counters map[string]uint64
	dropped  uint64
	execs    int
}

func (c *collector) snapshot() snap {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[string]uint64{}
	for k, v := range c.counters {
		m[k] = v
	}
	return snap{counters: m, dropped: c.dropped, execs: len(c.execs)}
}

// parseForkstat reads "HH:MM:SS exec PID  <process>" lines.
func parseForkstat(r io.Reader) []fsRec {
	var out []fsRec
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	base := time.Now().Truncate(24 * time.Hour) // forkstat prints UTC here
	name := filepath.Base(*target)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[1] != "exec" {
			continue
		}
		tm, err := time.Parse("15:04:05", f[0])
		if err != nil {
			continue
		}
		p, err := strconv.Atoi(f[2])
		if err != nil {
			continue
		}
		sec := base.Add(time.Duration(tm.Hour())*time.Hour + time.Duration(tm.Minute())*time.Minute + time.Duration(tm.Second())*time.Second).Unix()
		proc := f[3]
		out = append(out, fsRec{pid: int32(p), sec: sec, cmd: strings.HasPrefix(proc, *target), name: proc == name || strings.HasPrefix(proc, *target)})
	}
	return out
}

// background is procmon's load before the storm, from the rest of the
// (shared) machine.
type background struct {
	cpuPct float64 // of one core
	execs  float64 // per second
	// user and sys are procmon's CPU seconds during the storm.
	user, sys float64
}

type genRec struct {
	pid int32
	t   int64
}

func readPidlogs(prefix string, n int) ([]genRec, error) {
	var out []genRec
	for w := 0; w < n; w++ {
		f, err := os.Open(fmt.Sprintf("%s.%d", prefix, w))
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var p int32
			var t int64
			if _, err := fmt.Sscan(sc.Text(), &p, &t); err == nil {
				out = append(out, genRec{p, t})
			}
		}
		f.Close()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].t < out[j].t })
	return out, nil
}

// matcher finds the generated exec a (pid, time) observation belongs to:
// the nearest in time of the execs of the same pid within the window of
// it that no other observation took. Pids wrap (pid_max is 32768 here):
// with a filler that forks, a pid comes back in little more than a second
// at these rates, so the window may hold two execs of one pid; the
// matcher counts such observations (ambiguous), and report prints the
// shortest time between two storm execs of one pid and the offsets the
// matches had, which say whether the nearest was the right one.
type matcher struct {
	byPid  map[int32][]int // indexes into gen, by time
	gen    []genRec
	window int64 // observation may follow the storm's time by less than this
	before int64 // and precede it by less than this
	used   []bool

	ambiguous        int   // observations with two or more execs of their pid in the window
	minOff, maxOff   int64 // storm's time minus observation's, over the matches
	matched, reusedN int
}

func newMatcher(gen []genRec, window time.Duration) *matcher {
	return newMatcherAsym(gen, window, window)
}

// newMatcherAsym matches observations from before before the storm's time
// to after after it. The storm reads the clock once vfork has returned,
// which is in the middle of the child's exec, before the kernel sends the
// exec event; on a loaded machine either process can be descheduled for a
// while there, the storm (its reading comes late) more often than the
// child.
func newMatcherAsym(gen []genRec, before, after time.Duration) *matcher {
	m := &matcher{byPid: map[int32][]int{}, gen: gen, window: int64(after), before: int64(before), used: make([]bool, len(gen)),
		minOff: math.MaxInt64, maxOff: math.MinInt64}
	for i, g := range gen {
		m.byPid[g.pid] = append(m.byPid[g.pid], i)
	}
	return m
}

func (m *matcher) find(pid int32, t int64) int {
	best, cands := -1, 0
	var bestD int64
	for _, i := range m.byPid[pid] {
		d := m.gen[i].t - t
		if d <= -m.window || d >= m.before {
			continue
		}
		cands++
		if !m.used[i] && (best < 0 || abs(d) < abs(bestD)) {
			best, bestD = i, d
		}
	}
	if cands > 1 {
		m.ambiguous++
	}
	if best >= 0 {
		m.used[best] = true
		m.matched++
		m.minOff, m.maxOff = min(m.minOff, bestD), max(m.maxOff, bestD)
	}
	return best
}

// offsets says how far apart the matched storm times and observations
// were, the smallest and largest storm time minus observation time.
func (m *matcher) offsets(unit time.Duration) string {
	if m.matched == 0 {
		return "none"
	}
	return fmt.Sprintf("%v..%v", time.Duration(m.minOff).Round(unit), time.Duration(m.maxOff).Round(unit))
}

// pidReuse returns the shortest time between two generated execs of one
// pid, and how many generated execs had a pid used before in the storm.
func pidReuse(gen []genRec) (shortest time.Duration, reused int) {
	last := map[int32]int64{}
	shortest = time.Duration(math.MaxInt64)
	for _, g := range gen { // sorted by time
		if t, ok := last[g.pid]; ok {
			reused++
			shortest = min(shortest, time.Duration(g.t-t))
		}
		last[g.pid] = g.t
	}
	return shortest, reused
}

// sockDrops are the messages the kernel could not put in each tool's
// netlink sockets during the storm (the Drops column of /proc/net/netlink),
// by socket inode.
type sockDrops struct{ procmon, forkstat dropCounts }

type dropCounts map[string]uint64

func (d dropCounts) minus(o dropCounts) dropCounts {
	r := dropCounts{}
	for k, v := range d {
		r[k] = v - o[k]
	}
	return r
}

// String lists the counts by socket inode.
func (d dropCounts) String() string {
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b []string
	for _, k := range keys {
		b = append(b, strconv.FormatUint(d[k], 10))
	}
	return strings.Join(b, " + ")
}

func sum(d dropCounts) uint64 {
	var n uint64
	for _, v := range d {
		n += v
	}
	return n
}

// netlinkDrops returns the kernel's drop counts of the connector
// (NETLINK_CONNECTOR, 11) sockets that process pid holds.
func netlinkDrops(pid int) dropCounts {
	out := dropCounts{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return out
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	b, err := os.ReadFile("/proc/net/netlink")
	if err != nil {
		return out
	}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		// sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
		f := strings.Fields(l)
		if len(f) >= 10 && f[1] == "11" && inodes[f[9]] {
			out[f[9]], _ = strconv.ParseUint(f[8], 10, 64)
		}
	}
	return out
}

func report(gen []genRec, col *collector, base, end snap, fsRecs []fsRec, stormTime time.Duration, stormOut string,
	cpuTicksUsed, fsTicks uint64, rss0 uint64, rss, anon []uint64, bg background, drops sockDrops) {
	n := len(gen)
	achieved := float64(n) / stormTime.Seconds()

	// procmon: each generated exec captured at most once. The window (from
	// 1 s before the storm's time to 0.5 s after it) is kept shorter than
	// the shortest time between two storm execs of one pid, so that an
	// observation has one candidate at most.
	shortest, reused := pidReuse(gen)
	before, after := time.Second, 500*time.Millisecond
	if span := shortest * 9 / 10; before+after > span {
		before, after = span*2/3, span/3
	}
	m := newMatcherAsym(gen, before, after)
	seen := make([]bool, n)
	withCmd := make([]bool, n)
	col.mu.Lock()
	execs := col.execs[base.execs:]
	for _, e := range execs {
		if i := m.find(e.pid, e.t); i >= 0 {
			seen[i] = true
			if e.cmdline {
				withCmd[i] = true
			}
		}
	}
	col.mu.Unlock()
	captured, cmd := count(seen), count(withCmd)
	// Say what became of each generated exec procmon did not report: the
	// nearest exec event with its pid, if any (printed after the header).
	var unmatched []string
	shown := 0
	for i, ok := range seen {
		if ok || shown == 10 {
			continue
		}
		shown++
		g := gen[i]
		near := int64(math.MaxInt64)
		for _, e := range execs {
			if e.pid == g.pid {
				if d := e.t - g.t; abs(d) < abs(near) {
					near = d
				}
			}
		}
		if near == math.MaxInt64 {
			unmatched = append(unmatched, fmt.Sprintf("  unmatched: pid %d forked at %s, no exec event with that pid", g.pid, time.Unix(0, g.t).UTC().Format("15:04:05.000000")))
		} else {
			unmatched = append(unmatched, fmt.Sprintf("  unmatched: pid %d forked at %s, nearest exec event with that pid %v away", g.pid, time.Unix(0, g.t).UTC().Format("15:04:05.000000"), time.Duration(near)))
		}
	}

	// forkstat, matched by pid within ±2 s of the middle of the second it
	// prints, or less when pids come back sooner.
	fsWin := 2 * time.Second
	if span := shortest * 9 / 10; 2*fsWin > span {
		fsWin = span / 2
	}
	mf := newMatcher(gen, fsWin)
	fsSeen := make([]bool, n)
	fsCmd := make([]bool, n)
	for _, r := range fsRecs {
		if i := mf.find(r.pid, r.sec*1e9+5e8); i >= 0 {
			fsSeen[i] = true
			fsCmd[i] = r.cmd
		}
	}
	fsCaptured, fsWithCmd := count(fsSeen), count(fsCmd)

	d := func(k string) uint64 { return end.counters[k] - base.counters[k] }
	kernelLost, overruns, qdropExec, qdrop := d("kernel_events_lost"), d("kernel_overruns"), d("queue_dropped_exec"), d("queue_dropped")
	sdkDropped := end.dropped - base.dropped
	gone := d("exec_proc_gone")
	missed := n - captured
	counted := kernelLost + qdropExec + sdkDropped
	pct := func(a, b int) float64 {
		if b == 0 {
			return 0
		}
		return 100 * float64(a) / float64(b)
	}
	cpuSec := float64(cpuTicksUsed) / 100
	cpuPct := 100 * cpuSec / stormTime.Seconds()
	fsCPUPct := 100 * float64(fsTicks) / 100 / stormTime.Seconds()
	rssSteady, rssMax := steady(rss)
	anonSteady, anonMax := steady(anon)
	if *messages > 0 {
		fmt.Printf("== procmon vs forkstat: %.0f execs/s of %s (asked %.0f) + %s filler to %.0f connector messages/s for %s, config %s: NOT a %.0f execs/s storm ==\n",
			achieved, filepath.Base(*target), *rate, *filler, *messages, duration.String(), *config, *messages/3)
	} else {
		fmt.Printf("== procmon vs forkstat: asked %.0f execs/s of %s for %s, config %s ==\n", *rate, filepath.Base(*target), duration.String(), *config)
	}
	fmt.Print(indent(stormOut))
	fmt.Printf("%-44s %10d  (%.0f execs/s achieved)\n", "generated execs", n, achieved)
	fmt.Printf("%-44s %10d  (%.3f%%)\n", "procmon captured", captured, pct(captured, n))
	fmt.Printf("%-44s %10d  (%.2f%% of generated)\n", "procmon with the storm's command line", cmd, pct(cmd, n))
	fmt.Printf("%-44s %10d\n", "procmon missed", missed)
	for _, l := range unmatched {
		fmt.Println(l)
	}
	fmt.Printf("%-44s %10d\n", "  kernel_events_lost (all kinds, seq gaps)", kernelLost)
	fmt.Printf("%-44s %10d\n", "  kernel_overruns (ENOBUFS)", overruns)
	fmt.Printf("%-44s %10d  (all kinds: %d)\n", "  queue_dropped_exec", qdropExec, qdrop)
	fmt.Printf("%-44s %10d\n", "  sdk plugin_buffer_full drops (all kinds)", sdkDropped)
	fmt.Printf("%-44s %10d  (%s)\n", "captured + counted losses - generated", int64(captured)+int64(counted)-int64(n),
		map[bool]string{true: "every miss counted", false: "UNCOUNTED MISSES"}[int64(captured)+int64(counted) >= int64(n)])
	fmt.Printf("%-44s %10d\n", "procmon exec_proc_gone (whole machine)", gone)
	recv, lost := d("events_received"), kernelLost
	fmt.Printf("%-44s %10.0f/s  (procmon received + kernel_events_lost, whole machine)\n", "connector messages during the storm", float64(recv+lost)/stormTime.Seconds())
	fmt.Printf("%-44s %10.0f/s  (events_received: %d)\n", "  procmon received", float64(recv)/stormTime.Seconds(), recv)
	fmt.Printf("%-44s %10s  (kernel's count per socket, /proc/net/netlink)\n", "  procmon socket drops", drops.procmon)
	if *forkstat {
		fsRecv := int64(recv+lost) - int64(sum(drops.forkstat))
		fmt.Printf("%-44s %10.0f/s  (sent - its socket drops %d)\n", "  forkstat received", float64(fsRecv)/stormTime.Seconds(), sum(drops.forkstat))
	}
	reuse := "none"
	if reused > 0 {
		reuse = shortest.Round(time.Millisecond).String()
	}
	fmt.Printf("%-44s %10d  of %d generated; shortest time between two: %s\n", "pid matching: storm execs with a reused pid", reused, n, reuse)
	fmt.Printf("%-44s %10d  (%d with 2+ storm execs of the pid in the window); storm's time - event's: %s (window %v..%v)\n", "  procmon matches",
		m.matched, m.ambiguous, m.offsets(time.Microsecond), -time.Duration(m.window).Round(time.Millisecond), time.Duration(m.before).Round(time.Millisecond))
	if *forkstat {
		fmt.Printf("%-44s %10d  (%d with 2+ storm execs of the pid in the window); storm's time - printed second + 0.5 s: %s (window ±%v)\n", "  forkstat matches",
			mf.matched, mf.ambiguous, mf.offsets(time.Millisecond), time.Duration(mf.before).Round(time.Millisecond))
		fmt.Printf("%-44s %10d  (%.3f%%)\n", "forkstat captured", fsCaptured, pct(fsCaptured, n))
		fmt.Printf("%-44s %10d  (%.2f%% of generated)\n", "forkstat with the storm's command line", fsWithCmd, pct(fsWithCmd, n))
		fmt.Printf("%-44s %9.1f%%\n", "forkstat CPU (of one core)", fsCPUPct)
	}
	allExecs := float64(d("exec_received")) / stormTime.Seconds()
	fmt.Printf("%-44s %9.1f%%  on %.0f execs/s of background\n", "procmon CPU before the storm (of one core)", bg.cpuPct, bg.execs)
	fmt.Printf("%-44s %9.1f%%  (%.2f%% per 1000 execs/s: %.0f/s storm + background)\n", "procmon CPU during the storm (of one core)",
		cpuPct, cpuPct/(allExecs/1000), allExecs)
	fmt.Printf("%-44s %9.2f%%  per 1000 storm execs/s\n", "procmon CPU for the storm alone", (cpuPct-bg.cpuPct)/(achieved/1000))
	fmt.Printf("%-44s %7.2fs user, %.2fs system\n", "procmon CPU split during the storm", bg.user, bg.sys)
	fmt.Printf("%-44s %7.1f MB before, %.1f MB steady (median of 2nd half), %.1f MB max, %d samples\n", "procmon RSS",
		float64(rss0)/1024, float64(rssSteady)/1024, float64(rssMax)/1024, len(rss))
	fmt.Printf("%-44s %7.1f MB steady, %.1f MB max\n", "procmon RssAnon (private memory)", float64(anonSteady)/1024, float64(anonMax)/1024)
	if len(rss) >= 4 {
		q := len(rss) / 4
		fmt.Printf("%-44s %7.1f MB, %.1f MB, %.1f MB, %.1f MB\n", "procmon RSS at 1/4, 2/4, 3/4, end of storm",
			float64(rss[q-1])/1024, float64(rss[2*q-1])/1024, float64(rss[3*q-1])/1024, float64(rss[len(rss)-1])/1024)
	}
}

// steady returns the median of the second half of samples, and the max.
func steady(samples []uint64) (median, peak uint64) {
	for _, r := range samples {
		peak = max(peak, r)
	}
	if len(samples) == 0 {
		return 0, 0
	}
	tail := append([]uint64(nil), samples[len(samples)/2:]...)
	sort.Slice(tail, func(i, j int) bool { return tail[i] < tail[j] })
	return tail[len(tail)/2], peak
}

func abs(d int64) int64 {
	if d < 0 {
		return -d
	}
	return d
}

func count(b []bool) int {
	n := 0
	for _, x := range b {
		if x {
			n++
		}
	}
	return n
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

func cpuTicks(pid int) (uint64, error) {
	u, s, err := cpuSplit(pid)
	return u + s, err
}

// cpuSplit returns a process's user and system CPU time in clock ticks.
func cpuSplit(pid int) (user, sys uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	user, _ = strconv.ParseUint(f[11], 10, 64)
	sys, _ = strconv.ParseUint(f[12], 10, 64)
	return user, sys, nil
}

func rssKB(pid int) (uint64, error) { return statusKB(pid, "VmRSS:") }

// statusKB reads a kB line of /proc/PID/status: VmRSS is all resident
// memory, RssAnon the private part (RssFile is the binary's own pages,
// shared and reclaimable).
func statusKB(pid int, key string) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, key) {
			return strconv.ParseUint(strings.Fields(l)[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s for %d", key, pid)
}
