// Command vigil-sim runs many light simulated hosts against a real etcd to
// measure Vigil's control plane at scale. Each simulated host runs the real
// control loop (host/control) with an applier that has no plugins and
// acknowledges at once; hosts share a configurable number of etcd client
// connections, but each has its own lease, registration and watches.
//
//	vigil-sim -hosts 10000 -clients 16 -json out.json
//
// Without -endpoints it starts an embedded single-member etcd in the same
// process. Scenarios: register (the registration storm, always first),
// stop and resume (the emergency stop: one write of the fleet key, measured
// until every registration shows the revision applied), push (one host's
// config at a time: p50/p99 until applied and until acknowledged), offline
// (hosts stop renewing their leases: time until their keys disappear,
// against TTL + TTL/3). See docs/scale.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"text/tabwriter"
)

func main() {
	reexecWithoutStackShrinking(os.Args)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// reexecWithoutStackShrinking restarts the simulator (same pid, exec) with
// GODEBUG=gcshrinkstackoff=1 unless -shrink-stacks is given or it is a
// member or artifact server: the runtime reads that setting only at start.
// With it, the garbage collector leaves the loops' goroutine stacks grown
// between changes; with Go's default, each of the 20,000 loops had its
// stack copied up again for every acknowledgement (runtime.newstack, 13%
// of the simulator's CPU in a stop). A real host runs one loop: this is a
// cost of packing 20,000 into one process only.
func reexecWithoutStackShrinking(argv []string) {
	if strings.Contains(os.Getenv("GODEBUG"), "gcshrinkstackoff") {
		return
	}
	for _, a := range argv[1:] {
		if a == "-serve-member" || a == "-serve-artifacts" || a == "-serve-observer" || strings.HasPrefix(a, "-shrink-stacks") || strings.HasPrefix(a, "--shrink-stacks") {
			return
		}
	}
	self, err := os.Executable()
	if err != nil {
		return
	}
	env := append(os.Environ(), "GODEBUG="+strings.Trim(os.Getenv("GODEBUG")+",gcshrinkstackoff=1", ","))
	_ = syscall.Exec(self, argv, env) // on failure, run as is
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "-serve-member" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := serveMember(ctx, args[1:]); err != nil {
			fmt.Fprintln(stderr, "vigil-sim:", err)
			return 2
		}
		return 0
	}
	if len(args) > 0 && args[0] == "-serve-observer" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := serveObserver(ctx, args[1:], os.Stdin, stdout); err != nil {
			fmt.Fprintln(stderr, "vigil-sim:", err)
			return 2
		}
		return 0
	}
	if len(args) == 3 && args[0] == "-serve-artifacts" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := serveArtifacts(ctx, args[1], args[2]); err != nil {
			fmt.Fprintln(stderr, "vigil-sim:", err)
			return 2
		}
		return 0
	}
	o := DefaultOptions()
	fs := flag.NewFlagSet("vigil-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.Hosts, "hosts", o.Hosts, "simulated hosts")
	fs.IntVar(&o.Clients, "clients", o.Clients, "etcd client connections shared by the hosts")
	fs.IntVar(&o.Groups, "groups", o.Groups, "group labels per host, 0 to 3 (one watch each)")
	endpoints := fs.String("endpoints", "", "comma-separated etcd client URLs; empty starts an embedded etcd")
	fs.IntVar(&o.Cluster, "cluster", 0, "start a cell of this many etcd members, one child process each (0: one member embedded in this process)")
	fs.StringVar(&o.EtcdBin, "etcd-bin", "", "with -cluster: run this etcd binary (e.g. /usr/bin/etcd) instead of vigil-sim -serve-member (embedded etcd 3.7.3)")
	fs.IntVar(&o.Partition, "partition", 0, "with -cluster: this many more hosts run in a network namespace the simulator creates (root), for the partition scenario")
	fs.IntVar(&o.GRPCProxies, "grpc-proxy", 0, "with -cluster: put this many etcd gRPC proxies between the hosts and the cell")
	fs.StringVar(&o.GRPCProxyBin, "grpc-proxy-bin", "/usr/bin/etcd", "etcd binary whose grpc-proxy subcommand -grpc-proxy runs")
	fs.DurationVar(&o.Heartbeat, "heartbeat", 0, "with -cluster: the members' raft heartbeat interval (0: etcd's 100ms)")
	fs.DurationVar(&o.Election, "election", 0, "with -cluster: the members' election timeout (0: etcd's 1s)")
	fs.IntVar(&o.MemberGOGC, "member-gogc", o.MemberGOGC, "with -cluster: GOGC of the member processes (0: Go's default, 100; 400 cut the cell's CPU per write by ~25%; -1: off, collecting only near -member-memlimit; see docs/scale.md)")
	fs.StringVar(&o.MemberMemLimit, "member-memlimit", o.MemberMemLimit, "with -cluster: GOMEMLIMIT of the member processes, e.g. 4GiB (\"\": none; required with -member-gogc -1)")
	fs.StringVar(&o.MemberLog, "member-log", "", "with -cluster: the members' log level (debug, info, warn, error), logged to m<i>.log in the cell's directory (default: the embedded members log nothing)")
	fs.StringVar(&o.ServerBin, "server-bin", "", "with -cluster: also run this vigil-server binary against the cell (--etcd-endpoints the members, --insecure on loopback, --prefix the simulator's, --no-vuln), report its RSS and CPU, and poll its fleet progress during stop and resume")
	fs.IntVar(&o.MemberGOMAXPROCS, "member-gomaxprocs", o.MemberGOMAXPROCS, "with -cluster: GOMAXPROCS of the member processes (0: Go's default, every core; -1: each member's share of this machine's cores, at least 1; see docs/scale.md)")
	fs.BoolVar(&o.KeepCell, "keep-cell", false, "with -cluster: leave the cell's directory (members' data and logs) when the simulator ends; its path is in the report")
	fs.DurationVar(&o.Idle, "idle", o.Idle, "how long the idle scenario lets the registered fleet sit (measures lease renewal cost)")
	fs.IntVar(&o.RolloutMB, "rollout-mb", o.RolloutMB, "rollout scenario: artifact size in MiB")
	fs.DurationVar(&o.RolloutWindow, "rollout-window", o.RolloutWindow, "rollout scenario: spread window of the downloads (update.Spread)")
	partChild := fs.String("partition-child", "", "internal: run the partitioned hosts and write their status to this file")
	fs.StringVar(&o.DataDir, "data-dir", "", "embedded etcd data directory (default: a temporary directory); with -cluster the parent of the members' directories (default /dev/shm)")
	fs.BoolVar(&o.NoFsync, "no-fsync", false, "embedded etcd without fsync (faster, unsafe; for comparison only)")
	fs.StringVar(&o.Prefix, "prefix", "", "keyspace prefix (default: /vigil-sim-<time>, so runs never collide)")
	fs.DurationVar(&o.LeaseTTL, "ttl", o.LeaseTTL, "registration lease TTL")
	fs.DurationVar(&o.RequestTimeout, "request-timeout", o.RequestTimeout, "per-request timeout of each host (control.request_timeout; the default is the host's)")
	fs.DurationVar(&o.Spread, "spread", o.Spread, "spread of the hosts' first registration (control.spread)")
	fs.DurationVar(&o.AckSpread, "ack-spread", o.AckSpread, "spread of the hosts' acknowledgements of fleet-wide changes (control.ack_spread)")
	fs.DurationVar(&o.LeaderProbe, "leader-probe", o.LeaderProbe, "control.leader_probe of each host: a pending acknowledgement asks for the raft term this often and is resent on a new leader (0: off, the default; see docs/scale.md)")
	fs.DurationVar(&o.StatusInterval, "status-interval", o.StatusInterval, "how often each host polls plugin status")
	scen := fs.String("scenarios", strings.Join(o.Scenarios, ","), "comma-separated: register,stop,resume,push,offline,leader-loss (needs -cluster 3),partition (needs -partition N),idle,ackcost (cell CPU per acknowledgement write: guarded Txn vs plain Put)")
	fs.IntVar(&o.Pushes, "pushes", o.Pushes, "per-host config pushes measured")
	fs.IntVar(&o.ObserverWatches, "observer-watches", 1, "watch the agent prefix as this many sub-ranges, each on a connection of its own to one member (the observer, i.e. the server's view)")
	fs.BoolVar(&o.ObserverProcess, "observer-process", o.ObserverProcess, "measure stop, resume and leader-loss from an observer process of its own (this binary re-executed with -serve-observer: watches the agent prefix, polls the applied revision, reports each arrival's time); false: a watch inside this process, which also runs every host loop. Other scenarios, and -observer-watches above 1, always watch in-process")
	fs.DurationVar(&o.Settle, "settle", o.Settle, "pause before each scenario after registration, so that each starts on a fleet at rest (the machine's busy rate over its last seconds is in the scenario's note); 0: back to back")
	fs.IntVar(&o.Offline, "offline", o.Offline, "hosts killed in the offline scenario")
	fs.Uint64Var(&o.Seed, "seed", o.Seed, "seed choosing the pushed hosts")
	jsonPath := fs.String("json", "", "also write the report as JSON to this file ('-' for stdout only)")
	serveEtcd := fs.String("serve-etcd", "", "only run the embedded etcd (in this process, apart from the hosts) and write its client URL to this file; stop with SIGTERM")
	verbose := fs.Bool("v", false, "log the control loops' warnings to stderr")
	shrink := fs.Bool("shrink-stacks", false, "let the garbage collector shrink the simulator's goroutine stacks (Go's default); without it the simulator restarts itself with GODEBUG=gcshrinkstackoff=1, so the loops' stacks stay grown between changes instead of being copied up again on every acknowledgement (13% of the simulator's CPU in a stop)")
	gogc := fs.Int("gogc", 400, "garbage collector target percentage of the simulator process (memory is cheaper than CPU here)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this loopback address (e.g. 127.0.0.1:6060), to profile the simulator at a moment of one's choosing (the members serve it on their client URL)")
	fs.StringVar(&o.ProfileDir, "profile-dir", "", "write CPU profiles of the simulator and of every member (embedded etcd) over -profile-window from each stop, resume and leader-loss write into this directory")
	fs.DurationVar(&o.ProfileWindow, "profile-window", o.ProfileWindow, "length of the -profile-dir profiles")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *endpoints != "" {
		o.Endpoints = strings.Split(*endpoints, ",")
	}
	o.Scenarios = strings.Split(*scen, ",")
	if *verbose {
		o.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}

	if *cpuProfile != "" && o.ProfileDir != "" {
		fmt.Fprintln(stderr, "vigil-sim: -cpuprofile and -profile-dir exclude each other (one CPU profile at a time)")
		return 2
	}
	if o.ProfileDir != "" {
		if err := os.MkdirAll(o.ProfileDir, 0o755); err != nil {
			fmt.Fprintln(stderr, "vigil-sim:", err)
			return 2
		}
	}
	debug.SetGCPercent(*gogc)
	_ = shrink // acted on before run (reexecWithoutStackShrinking)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "vigil-sim:", err)
			return 2
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "vigil-sim:", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}
	if *pprofAddr != "" {
		if err := servePprof(*pprofAddr); err != nil {
			fmt.Fprintln(stderr, "vigil-sim:", err)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *partChild != "" {
		if err := runPartChild(ctx, o, *partChild); err != nil {
			fmt.Fprintln(stderr, "vigil-sim:", err)
			return 2
		}
		return 0
	}
	if *serveEtcd != "" {
		return serveOnly(ctx, o, *serveEtcd, stderr)
	}
	if len(o.Scenarios) == 1 && o.Scenarios[0] == "rollout" {
		// No etcd: the etcd flags' bounds do not apply.
		o.Offline, o.Clients = min(o.Offline, o.Hosts), min(o.Clients, o.Hosts)
		if err := o.Validate(); err != nil {
			fmt.Fprintln(stderr, "vigil-sim:", err)
			return 2
		}
		rep, err := runRollout(ctx, o)
		return report(stdout, stderr, *jsonPath, rep, err)
	}
	sim, err := NewSim(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, "vigil-sim:", err)
		return 2
	}
	rep, err := sim.Run(ctx)
	// The report is written before the hosts are stopped (20,000 loops take
	// a while): a run stopped by SIGTERM (run.sh's timeout) still reports.
	defer sim.Close()
	return report(stdout, stderr, *jsonPath, rep, err)
}

// report prints rep as a table (and JSON to jsonPath) or as JSON only
// (jsonPath "-"), and returns the exit code: 1 if err or a target missed.
func report(stdout, stderr io.Writer, jsonPath string, rep Report, err error) int {
	if err != nil {
		fmt.Fprintln(stderr, "vigil-sim:", err)
	}
	if jsonPath == "-" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	} else {
		printTable(stdout, rep)
		if jsonPath != "" {
			b, _ := json.MarshalIndent(rep, "", "  ")
			if werr := os.WriteFile(jsonPath, append(b, '\n'), 0o644); werr != nil {
				fmt.Fprintln(stderr, "vigil-sim:", werr)
				return 1
			}
		}
	}
	if err != nil {
		return 1
	}
	for _, r := range rep.Results {
		if !r.Met {
			return 1
		}
	}
	return 0
}

func printTable(w io.Writer, rep Report) {
	fmt.Fprintf(w, "vigil-sim: %d hosts, %d etcd clients, %d group watches per host, lease TTL %s, registration spread %s, ack spread %s, etcd: %s\n",
		rep.Hosts, rep.Clients, rep.Groups, rep.LeaseTTL, rep.Spread, rep.AckSpread, rep.Etcd)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tcount\tdone\ttotal ms\tp50 ms\tp99 ms\tmax ms\tmet\tload\ttarget\t")
	for _, r := range rep.Results {
		total := "-"
		if r.TotalMS > 0 {
			total = fmt.Sprintf("%.0f", r.TotalMS)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%.1f\t%.1f\t%.1f\t%v\t%.1f\t%s\t\n",
			r.Scenario, r.Count, r.Done, total, r.P50MS, r.P99MS, r.MaxMS, r.Met, r.Load1, r.Target)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "process: %d goroutines at the end, max RSS %.0f MiB, CPU %.1f s (after registration: RSS %.0f MiB, CPU %.1f s); load average %s at the start, %s at the end\n",
		rep.Goroutines, rep.MaxRSSMB, rep.CPUSeconds, rep.SimAfterRegisterRSSMB, rep.SimAfterRegisterCPU, rep.LoadStart, rep.LoadEnd)
	if rep.Cluster > 0 {
		fmt.Fprintf(w, "etcd cell: %d leader changes, %d polls without a leader (polled every second), raft term %d after registration, %d at the end; hosts: %d acknowledgements resent on a new raft term, %d fresh reads after a watch ended, %d failed acknowledgements retried %v\n", rep.LeaderChanges, rep.LeaderlessPolls, rep.TermAfterRegister, rep.TermEnd, rep.AckResends, rep.Resyncs, rep.AckFailures, rep.AckErrors)
	}
	for i, st := range rep.EtcdAtEnd {
		var reg MemberStat
		if i < len(rep.EtcdAfterRegister) {
			reg = rep.EtcdAfterRegister[i]
		}
		fmt.Fprintf(w, "etcd %s: after registration RSS %.0f MiB, CPU %.1f s; at the end RSS %.0f MiB, CPU %.1f s\n", st.Name, reg.RSSMB, reg.CPUSeconds, st.RSSMB, st.CPUSeconds)
	}
	if rep.ServerBeforeRegister != nil {
		var reg, end MemberStat
		if rep.ServerAfterRegister != nil {
			reg = *rep.ServerAfterRegister
		}
		if rep.ServerAtEnd != nil {
			end = *rep.ServerAtEnd
		}
		b := rep.ServerBeforeRegister
		fmt.Fprintf(w, "vigil-server: before registration RSS %.0f MiB, CPU %.1f s; after registration RSS %.0f MiB, CPU %.1f s; at the end RSS %.0f MiB, CPU %.1f s (running %v)\n",
			b.RSSMB, b.CPUSeconds, reg.RSSMB, reg.CPUSeconds, end.RSSMB, end.CPUSeconds, end.Running)
	}
}

// serveOnly runs the embedded etcd alone, so that a second vigil-sim
// process can run the hosts against it: etcd then has its own Go runtime
// and scheduler share, as on a real etcd server.
func serveOnly(ctx context.Context, o Options, urlFile string, stderr io.Writer) int {
	s := &Sim{opts: o}
	if err := s.startEtcd(); err != nil {
		fmt.Fprintln(stderr, "vigil-sim:", err)
		return 2
	}
	defer s.Close()
	if err := os.WriteFile(urlFile, []byte(s.eps[0]+"\n"), 0o644); err != nil {
		fmt.Fprintln(stderr, "vigil-sim:", err)
		return 2
	}
	<-ctx.Done()
	return 0
}
