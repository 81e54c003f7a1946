package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSimSmallFleet runs every scenario with a small fleet against an
// embedded etcd and checks that each measured every host or push (not how
// fast: figures come from bench/scale/run.sh).
func TestSimSmallFleet(t *testing.T) {
	out := filepath.Join(t.TempDir(), "report.json")
	var stdout, stderr bytes.Buffer
	code := run([]string{"-hosts", "40", "-clients", "4", "-ttl", "3s", "-pushes", "10", "-offline", "5",
		"-data-dir", t.TempDir(), "-json", out}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("vigil-sim exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("report: %v", err)
	}
	want := map[string]int{"register": 40, "stop": 40, "resume": 40, "push-apply": 10, "push-ack": 10, "offline": 5}
	for _, r := range rep.Results {
		if n, ok := want[r.Scenario]; !ok || r.Done != n || r.Count != n {
			t.Errorf("%s: %d of %d done, want %d", r.Scenario, r.Done, r.Count, n)
		}
		delete(want, r.Scenario)
	}
	if len(want) != 0 {
		t.Errorf("scenarios missing from the report: %v", want)
	}
	if !strings.Contains(stdout.String(), "push-apply") {
		t.Errorf("table lacks the push-apply row:\n%s", stdout.String())
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{name: "defaults", mod: func(*Options) {}},
		{name: "no hosts", mod: func(o *Options) { o.Hosts = 0 }, want: "-hosts must be between 1 and 1000000 (got 0)"},
		{name: "more clients than hosts", mod: func(o *Options) { o.Hosts, o.Clients = 2, 3 }, want: "-clients must be between 1 and -hosts (got 3)"},
		{name: "unknown scenario", mod: func(o *Options) { o.Scenarios = []string{"stop", "reboot"} }, want: `unknown scenario "reboot"`},
		{name: "too many offline", mod: func(o *Options) { o.Offline = o.Hosts + 1 }, want: "-offline must be between 0 and -hosts"},
		{name: "server without cell", mod: func(o *Options) { o.ServerBin = "/usr/bin/vigil-server" }, want: "-server-bin needs -cluster"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			tc.mod(&o)
			err := o.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestMain lets this test binary serve as the etcd members and the
// partitioned hosts' process that vigil-sim starts by re-executing itself.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && (os.Args[1] == "-serve-member" || os.Args[1] == "-partition-child" || os.Args[1] == "-serve-artifacts" || os.Args[1] == "-serve-observer") {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// runReport runs vigil-sim with args and returns its JSON report; exit code
// 1 (a target missed, timing) is accepted, anything else fails the test.
func runReport(t *testing.T, args ...string) Report {
	t.Helper()
	out := filepath.Join(t.TempDir(), "report.json")
	var stdout, stderr bytes.Buffer
	code := run(append(args, "-json", out), &stdout, &stderr)
	if code != 0 && code != 1 {
		t.Fatalf("vigil-sim exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("%v\nstderr:\n%s", err, stderr.String())
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("report: %v", err)
	}
	return rep
}

func checkDone(t *testing.T, rep Report, want map[string]int) {
	t.Helper()
	for _, r := range rep.Results {
		if n, ok := want[r.Scenario]; !ok || r.Done != n || r.Count != n {
			t.Errorf("%s: %d of %d done, want %d (note: %s)", r.Scenario, r.Done, r.Count, n, r.Note)
		}
		delete(want, r.Scenario)
	}
	if len(want) != 0 {
		t.Errorf("scenarios missing from the report: %v", want)
	}
}

// TestSimClusterLeaderLoss runs a small fleet on a cell of three etcd
// member processes and kills the leader right after a fleet-wide stop:
// every host must still acknowledge (seen by the observer process, through
// the members that survive), and the members are gone afterwards.
func TestSimClusterLeaderLoss(t *testing.T) {
	rep := runReport(t, "-hosts", "30", "-clients", "3", "-cluster", "3", "-ttl", "3s", "-request-timeout", "2s",
		"-offline", "3", "-data-dir", t.TempDir(), "-scenarios", "register,stop,leader-loss,resume")
	checkDone(t, rep, map[string]int{"register": 30, "stop": 30, "leader-loss": 30, "resume": 30})
	if len(rep.EtcdAtEnd) != 3 {
		t.Errorf("report has %d etcd members, want 3", len(rep.EtcdAtEnd))
	}
	for _, r := range rep.Results {
		if r.Scenario == "leader-loss" && (!strings.Contains(r.Note, "observer process (pid") || strings.Contains(r.Note, "observer error")) {
			t.Errorf("leader-loss not measured by the observer process: %s", r.Note)
		}
	}
}

// TestSimPartition cuts 10 hosts off in a network namespace and heals:
// they keep (and, restarted, reapply) their persisted state and then
// acknowledge the change made while they were away. Needs root and ip.
func TestSimPartition(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip command")
	}
	rep := runReport(t, "-hosts", "20", "-clients", "2", "-cluster", "1", "-ttl", "3s", "-partition", "10",
		"-offline", "2", "-data-dir", t.TempDir(), "-scenarios", "register,stop,partition")
	checkDone(t, rep, map[string]int{"register": 30, "stop": 30, "partition-offline": 10, "partition-persisted": 1, "partition-converge": 10})
	for _, r := range rep.Results {
		if r.Scenario == "partition-persisted" && !strings.Contains(r.Note, "10 of 10 hosts hold the pre-partition state") {
			t.Errorf("partitioned hosts lost their state: %s", r.Note)
		}
	}
}

// TestSimRollout downloads a small artifact to 20 hosts with the real
// update code from the artifact server process: every host gets it and
// the server sends exactly hosts × size bytes.
func TestSimRollout(t *testing.T) {
	rep := runReport(t, "-hosts", "20", "-rollout-mb", "1", "-rollout-window", "1s", "-scenarios", "rollout")
	checkDone(t, rep, map[string]int{"rollout": 20})
	if r := rep.Results[0]; !strings.Contains(r.Note, "bytes served 20971520 = 1.000 × hosts × size") {
		t.Errorf("rollout note: %s", r.Note)
	}
}

// TestSimObserverProcess measures the stop and resume from the observer
// process (-serve-observer): every host's acknowledgement must be counted,
// and the note must carry the observer's CPU and RSS.
func TestSimObserverProcess(t *testing.T) {
	rep := runReport(t, "-hosts", "20", "-clients", "2", "-ttl", "3s", "-offline", "2", "-observer-process=true",
		"-data-dir", t.TempDir(), "-scenarios", "register,stop,resume")
	checkDone(t, rep, map[string]int{"register": 20, "stop": 20, "resume": 20})
	for _, r := range rep.Results {
		if r.Scenario != "register" && !strings.Contains(r.Note, "observer process (pid") {
			t.Errorf("%s: note lacks the observer process's figures: %s", r.Scenario, r.Note)
		}
		if strings.Contains(r.Note, "observer error") {
			t.Errorf("%s: %s", r.Scenario, r.Note)
		}
	}
}
