package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSimWithServer builds the real vigil-server, runs it against a small
// fleet on a cell of three members (-server-bin), and checks that its
// process is measured and that its fleet progress answer reported every
// host's acknowledgement of the stop and of the resume.
func TestSimWithServer(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "vigil-server")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/vigil-hids/vigil/cmd/vigil-server").CombinedOutput(); err != nil {
		t.Fatalf("building vigil-server: %v\n%s", err, out)
	}
	rep := runReport(t, "-hosts", "20", "-clients", "2", "-cluster", "3", "-ttl", "5s", "-offline", "2",
		"-data-dir", t.TempDir(), "-scenarios", "register,stop,resume", "-server-bin", bin)
	checkDone(t, rep, map[string]int{"register": 20, "stop": 20, "resume": 20})
	for name, st := range map[string]*MemberStat{"before registration": rep.ServerBeforeRegister,
		"after registration": rep.ServerAfterRegister, "at the end": rep.ServerAtEnd} {
		if st == nil || !st.Running || st.RSSMB <= 0 {
			t.Errorf("vigil-server %s: %+v, want a running process with its RSS", name, st)
		}
	}
	for _, r := range rep.Results {
		if (r.Scenario == "stop" || r.Scenario == "resume") && !strings.Contains(r.Note, "): all 20 acknowledged at") {
			t.Errorf("%s: the server's progress did not report all 20 hosts: %s", r.Scenario, r.Note)
		}
	}
}

// TestStartServerExit names the server's own complaint when it refuses
// to start.
func TestStartServerExit(t *testing.T) {
	dir := t.TempDir()
	_, err := startServer("/bin/false", []string{"http://127.0.0.1:1"}, "/p", dir)
	if err == nil || !strings.Contains(err.Error(), "exited at start") {
		t.Fatalf("startServer(/bin/false) = %v, want an error naming the exit", err)
	}
}
