package vulnscan_test

import (
	"compress/gzip"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/vigil-hids/vigil/plugins/vulnscan"
	"github.com/vigil-hids/vigil/plugins/vulnscan/collect"
	"github.com/vigil-hids/vigil/sdk/sdktest"
	"github.com/vigil-hids/vigil/vuln/inventory"
)

// readerModeEnv makes the rpm reader child of this test binary misbehave
// on purpose: "spin" loops on a core, "grow" allocates without end. They
// stand for a parser bug that collect.CheckRPM does not foresee; the
// real reader (collect.ReadRPM) runs otherwise.
const readerModeEnv = "VIGIL_VULNSCAN_TEST_READER"

var sink [][]byte

func testReader(mode string) func(string) ([]inventory.Package, error) {
	switch mode {
	case "spin":
		return func(string) ([]inventory.Package, error) {
			for n := 0; ; n++ {
				if n < 0 {
					return nil, errors.New("unreachable")
				}
			}
		}
	case "grow":
		return func(string) ([]inventory.Package, error) {
			for {
				b := make([]byte, 16<<20)
				for i := range b {
					b[i] = 1
				}
				sink = append(sink, b)
			}
		}
	}
	return collect.ReadRPM
}

// rpmRoot is a root with the rpm fixture name of package collect at
// dbpath, changed by corrupt when not nil, and an os-release saying id.
func rpmRoot(t *testing.T, name, dbpath, id string, corrupt func([]byte)) (root, db string) {
	t.Helper()
	in, err := os.Open(filepath.Join("collect", "testdata", "rpm", name))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	zr, err := gzip.NewReader(in)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if corrupt != nil {
		corrupt(b)
	}
	root = t.TempDir()
	db = filepath.Join(root, dbpath)
	if err := os.MkdirAll(filepath.Dir(db), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(db, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/os-release"), []byte("ID="+id+"\nVERSION_ID=\"8.8\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root, db
}

// TestRPMInChildProcess: the plugin reads rpm databases (Berkeley DB and
// NDB here) through its reader child and emits their digests.
func TestRPMInChildProcess(t *testing.T) {
	for _, tt := range []struct {
		name, fixture, dbpath, id string
		packages                  int64
	}{
		{name: "berkeley db", fixture: "Packages.gz", dbpath: "var/lib/rpm/Packages", id: "centos", packages: 1},
		{name: "ndb", fixture: "Packages.db.gz", dbpath: "usr/lib/sysimage/rpm/Packages.db", id: "sles", packages: 35},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root, _ := rpmRoot(t, tt.fixture, tt.dbpath, tt.id, nil)
			h := sdktest.New(t, vulnscan.NewWith(vulnscan.Options{RPMReaderChild: true}))
			if err := h.Configure(config(t, map[string]any{"root": root, "watch": false})); err != nil {
				t.Fatal(err)
			}
			h.Start()
			ev := h.WaitEvents(outcome, 1, wait)[0]
			if ev.Type != vulnscan.EventDigest || ev.Str("ecosystem") != "rpm" || ev.Int("packages") != tt.packages {
				t.Errorf("event %s", ev)
			}
			if err := h.Stop(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCorruptRPMIsRefused: the Berkeley DB file on which go-rpmdb v0.1.1
// never returns (one bit flipped in the type of an overflow page in the
// middle of a chain) is refused by name, with the reader child and
// without; the plugin reports the collection as failed and keeps going.
func TestCorruptRPMIsRefused(t *testing.T) {
	for _, child := range []bool{true, false} {
		t.Run("child="+strconv.FormatBool(child), func(t *testing.T) {
			root, db := rpmRoot(t, "Packages.gz", "var/lib/rpm/Packages", "centos", func(b []byte) { b[12*4096+25] ^= 8 })
			h := sdktest.New(t, vulnscan.NewWith(vulnscan.Options{RPMReaderChild: child}))
			if err := h.Configure(config(t, map[string]any{"root": root, "watch": false})); err != nil {
				t.Fatal(err)
			}
			h.Start()
			ev := h.WaitEvents(outcome, 1, wait)[0]
			want := "rpm database " + db + ": overflow page 11's overflow chain points at page 12 of type 15 (want overflow)"
			if ev.Type != vulnscan.EventError || ev.Str("error") != want {
				t.Errorf("event %s\nwant error %q", ev, want)
			}
			if _, err := h.Task(vulnscan.TaskInventory, nil); err == nil || !strings.Contains(err.Error(), "overflow chain") {
				t.Errorf("inventory task = %v, want the collection's error", err)
			}
			if err := h.Stop(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestReaderChildKilled: a reader that spins or grows without end (a
// parser bug the pre-check does not foresee) is killed, the collection
// fails with an error saying so, and no reader process is left.
func TestReaderChildKilled(t *testing.T) {
	for _, tt := range []struct{ mode, want string }{
		{mode: "spin", want: "the reader process was killed after 7.2s"},
		{mode: "grow", want: "the reader process reached its memory limit (512 MiB above"},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			t.Setenv(readerModeEnv, tt.mode)
			root, db := rpmRoot(t, "Packages.gz", "var/lib/rpm/Packages", "centos", nil)
			h := sdktest.New(t, vulnscan.NewWith(vulnscan.Options{RPMReaderChild: true}))
			// The reader is killed at 90% of collect_timeout, before the
			// collection's own timer: 10% of 1 s was too short a lead on
			// a loaded box ("did not finish within 1s" won). With 8 s
			// both leads (over that timer, and of the wall clock over the
			// child's 8 s CPU limit) are 800 ms.
			timeout := "8s"
			if tt.mode == "grow" {
				timeout = "5m" // failure bound only: the memory limit ends it
			}
			if err := h.Configure(config(t, map[string]any{"root": root, "watch": false, "collect_timeout": timeout})); err != nil {
				t.Fatal(err)
			}
			h.Start()
			ev := h.WaitEvents(outcome, 1, wait*10)[0]
			if ev.Type != vulnscan.EventError || !strings.Contains(ev.Str("error"), "reading rpm database "+db+": ") ||
				!strings.Contains(ev.Str("error"), tt.want) {
				t.Errorf("event %s\nwant an error saying %q", ev, tt.want)
			}
			if err := h.Stop(); err != nil {
				t.Fatal(err)
			}
			if pids := readerChildren(t); len(pids) != 0 {
				t.Errorf("reader processes left: %v", pids)
			}
		})
	}
}

// TestReaderCPULimit runs the reader child directly with a CPU limit of 1
// second and no wall-clock limit: the kernel kills it (nothing else sends
// it SIGKILL).
func TestReaderCPULimit(t *testing.T) {
	_, db := rpmRoot(t, "Packages.gz", "var/lib/rpm/Packages", "centos", nil)
	cmd := exec.Command(os.Args[0], vulnscan.RPMReaderArg, db, "1", strconv.Itoa(512<<20))
	cmd.Env = append(os.Environ(), readerModeEnv+"=spin")
	err := cmd.Run()
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if err == nil || !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("reader = %v, want killed by SIGKILL", err)
	}
}

// outcome matches the event a collection ends with.
func outcome(e sdktest.Event) bool {
	return e.Type == vulnscan.EventDigest || e.Type == vulnscan.EventError
}

// readerChildren lists this process's children that are rpm readers.
func readerChildren(t *testing.T) []int {
	t.Helper()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var pids []int
	for _, d := range dirs {
		stat, err := os.ReadFile(filepath.Join(d, "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) < 2 || f[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(d, "cmdline"))
		if strings.Contains(string(cmdline), vulnscan.RPMReaderArg) {
			pid, _ := strconv.Atoi(filepath.Base(d))
			pids = append(pids, pid)
		}
	}
	return pids
}
