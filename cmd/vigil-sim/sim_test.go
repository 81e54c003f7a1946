package main

import (
	"bytes"
	"encoding/json"
	"os"
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
