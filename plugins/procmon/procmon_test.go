package procmon

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/vigil-hids/vigil/sdk/sdktest"
)

// helperEnv makes the test binary act as a small program instead of
// running tests, for the processes the detections need.
const helperEnv = "VIGIL_PROCMON_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		helper(mode, os.Args[1:])
		os.Exit(2)
	}
	goleak.VerifyTestMain(m)
}

// helper runs one helper mode; it only returns on failure.
//
//	memfd PATH ARGS...    copy PATH into a memfd and exec it
//	deleted PATH ARGS...  open PATH, delete it, exec it through the descriptor
func helper(mode string, args []string) {
	src, argv := args[0], args[1:]
	var fd int
	switch mode {
	case "memfd":
		b, err := os.ReadFile(src)
		if err != nil {
			panic(err)
		}
		fd, err = unix.MemfdCreate("vigil-test", 0)
		if err != nil {
			panic(err)
		}
		if _, err := unix.Write(fd, b); err != nil {
			panic(err)
		}
	case "deleted":
		var err error
		if fd, err = unix.Open(src, unix.O_RDONLY, 0); err != nil {
			panic(err)
		}
		if err := os.Remove(src); err != nil {
			panic(err)
		}
	}
	err := syscall.Exec("/proc/self/fd/"+strconv.Itoa(fd), argv, os.Environ())
	fmt.Fprintln(os.Stderr, "helper exec:", err)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: subscribing to the kernel proc connector requires CAP_NET_ADMIN, and the tests create cgroups")
	}
}

// startPlugin runs procmon in the in-process harness with config.
func startPlugin(t *testing.T, config string) *sdktest.Harness {
	t.Helper()
	requireRoot(t)
	h := sdktest.New(t, New, sdktest.WithLogLevel("info"))
	if err := h.Configure(config); err != nil {
		t.Fatal(err)
	}
	h.Start()
	// The socket is subscribed once the first counters arrive; run an
	// exec until procmon reports one, so no test races the subscription.
	h.WaitFor("procmon to see execs", 10*time.Second, func() bool {
		_ = exec.Command("/bin/true").Run()
		return h.Counters()[CounterExecReceived] > 0
	})
	return h
}

func pidIs(pid int) func(sdktest.Event) bool {
	return func(e sdktest.Event) bool { return e.Int("pid") == int64(pid) }
}

func execOf(pid int) func(sdktest.Event) bool {
	return func(e sdktest.Event) bool { return e.Type == "exec" && e.Int("pid") == int64(pid) }
}

// copyFile copies an executable to dst.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// privateDir makes a directory that is not world-writable (unlike
// t.TempDir under /tmp), for binaries that must not trip that rule.
func privateDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/run", "vigil-procmon-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func run(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

func TestExecEnrichment(t *testing.T) {
	h := startPlugin(t, `{}`)
	self, _ := os.Executable()
	nsOf := func(kind string) int64 {
		l, _ := os.Readlink("/proc/self/ns/" + kind)
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(l, kind+":["), "]"), 10, 64)
		return n
	}
	dir := privateDir(t)
	tests := []struct {
		name    string
		args    []string
		cred    *syscall.Credential
		exe     string
		cmdline string
		uid     int64
	}{
		{"root sleep", []string{"/bin/sleep", "2"}, nil, "/usr/bin/sleep", "/bin/sleep 2", 0},
		{"nobody sleep", []string{"/bin/sleep", "2.5"}, &syscall.Credential{Uid: 65534, Gid: 65534}, "/usr/bin/sleep", "/bin/sleep 2.5", 65534},
		{"long args", []string{"/bin/sh", "-c", "sleep 2; : " + strings.Repeat("x", 100)}, nil, "/usr/bin/dash", "/bin/sh -c sleep 2; : " + strings.Repeat("x", 100), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(tt.args[0], tt.args[1:]...)
			cmd.Dir = dir
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: tt.cred}
			before := time.Now()
			pid := run(t, cmd)
			ev := h.WaitEvents(execOf(pid), 1, 10*time.Second)[0]
			if ev.Bool("proc_gone") {
				t.Fatalf("process %d reported gone: %v", pid, ev)
			}
			checks := []struct {
				key       string
				got, want any
			}{
				{"exe", ev.Str("exe"), tt.exe},
				{"cmdline", ev.Str("cmdline"), tt.cmdline},
				{"cwd", ev.Str("cwd"), dir},
				{"uid", ev.Int("uid"), tt.uid},
				{"euid", ev.Int("euid"), tt.uid},
				{"gid", ev.Int("gid"), tt.uid},
				{"ppid", ev.Int("ppid"), int64(os.Getpid())},
				{"parent_exe", ev.Str("parent_exe"), self},
				{"pid_ns", ev.Int("pid_ns"), nsOf("pid")},
				{"mnt_ns", ev.Int("mnt_ns"), nsOf("mnt")},
				{"container_id", ev.Str("container_id"), ""},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("%s = %v, want %v", c.key, c.got, c.want)
				}
			}
			if st := time.Unix(0, ev.Int("start_time")); st.Before(before.Add(-time.Second)) || st.After(time.Now().Add(time.Second)) {
				t.Errorf("start_time %v, want about %v", st, before)
			}
			if d := ev.Time.Sub(before); d < -time.Second || d > 5*time.Second {
				t.Errorf("event time %v, %v after the start", ev.Time, d)
			}
		})
	}
	c := h.Counters()
	if c[CounterOverruns] != 0 || c[CounterKernelLost] != 0 || c[CounterQueueDropped] != 0 {
		t.Errorf("losses in a quiet test: %v", c)
	}
}

func TestCmdlineCap(t *testing.T) {
	h := startPlugin(t, `{"cmdline_max": 64}`)
	pid := run(t, exec.Command("/bin/sleep", "2", strings.Repeat("9", 200)))
	ev := h.WaitEvents(execOf(pid), 1, 10*time.Second)[0]
	if got := ev.Str("cmdline"); len(got) != 64 || !strings.HasPrefix(got, "/bin/sleep 2 999") {
		t.Errorf("cmdline %q (%d bytes), want the first 64 bytes", got, len(got))
	}
}

// TestContainerAttribution moves a child into real cgroups named the way
// container runtimes name theirs, and checks its exec is attributed.
func TestContainerAttribution(t *testing.T) {
	h := startPlugin(t, `{}`)
	const id = "4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b"
	const pod = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
	if _, err := os.Stat("/sys/fs/cgroup/pids/cgroup.procs"); err != nil {
		t.Fatalf("needs the cgroup v1 pids hierarchy at /sys/fs/cgroup/pids: %v", err)
	}
	tests := []struct {
		name, path, runtime, pod string
	}{
		{"docker cgroupfs", "docker/" + id, "docker", ""},
		{"kubernetes cgroupfs", "kubepods/besteffort/pod" + pod + "/" + id, "kubernetes", pod},
		{"podman systemd", "machine.slice/libpod-" + id + ".scope", "podman", ""},
		{"cri-o systemd", "kubepods.slice/kubepods-pod" + strings.ReplaceAll(pod, "-", "_") + ".slice/crio-" + id + ".scope", "cri-o", pod},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cg := filepath.Join("/sys/fs/cgroup/pids", "vigil-test", tt.path)
			if err := os.MkdirAll(cg, 0o755); err != nil {
				t.Fatal(err)
			}
			defer removeCgroup(t, filepath.Join("/sys/fs/cgroup/pids", "vigil-test"))
			// The shell waits for the test to see its own exec (still on
			// the host), then joins the cgroup and execs the command that
			// procmon must attribute.
			cmd := exec.Command("/bin/sh", "-c", "read go && echo $$ > "+cg+"/cgroup.procs && exec /bin/sleep 1.5")
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			pid := run(t, cmd)
			sh := h.WaitEvents(func(e sdktest.Event) bool { return execOf(pid)(e) && e.Str("exe") == "/usr/bin/dash" }, 1, 10*time.Second)[0]
			if sh.Str("container_id") != "" {
				t.Errorf("shell attributed to container %q before it moved", sh.Str("container_id"))
			}
			if _, err := io.WriteString(stdin, "go\n"); err != nil {
				t.Fatal(err)
			}
			evs := h.WaitEvents(func(e sdktest.Event) bool { return execOf(pid)(e) && e.Str("exe") == "/usr/bin/sleep" }, 1, 10*time.Second)
			ev := evs[0]
			if ev.Str("container_id") != id || ev.Str("container_runtime") != tt.runtime || ev.Str("pod_uid") != tt.pod {
				t.Errorf("container_id %q runtime %q pod %q, want %q %q %q", ev.Str("container_id"), ev.Str("container_runtime"), ev.Str("pod_uid"), id, tt.runtime, tt.pod)
			}
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	}
}

// removeCgroup removes a cgroup tree, deepest first, once it is empty.
func removeCgroup(t *testing.T, root string) {
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		for range 100 {
			if err := os.Remove(dirs[i]); err == nil || os.IsNotExist(err) {
				break
			}
			time.Sleep(10 * time.Millisecond) // the killed child may still be exiting
		}
	}
}

// TestDetections fires each rule with a real process and checks that a
// benign twin, alike but for the one thing the rule looks at, does not.
func TestDetections(t *testing.T) {
	h := startPlugin(t, `{}`)
	self, _ := os.Executable()
	priv := privateDir(t)
	copyFile(t, "/bin/sleep", filepath.Join(priv, "sleep"))
	copyFile(t, "/usr/bin/dash", filepath.Join(priv, "nginx"))
	copyFile(t, "/usr/bin/dash", filepath.Join(priv, "worker"))

	helperCmd := func(mode string, args ...string) *exec.Cmd {
		cmd := exec.Command(self, args...)
		cmd.Env = append(os.Environ(), helperEnv+"="+mode)
		return cmd
	}
	socketStdin := func(t *testing.T) *exec.Cmd {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		f, err := c.(*net.TCPConn).File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		// "; true" keeps sh from exec'ing sleep in place before procmon
		// has read it.
		cmd := exec.Command("/bin/sh", "-c", "sleep 2; true")
		cmd.Stdin, cmd.Stdout = f, f
		return cmd
	}
	pipeStdin := func(t *testing.T) *exec.Cmd {
		cmd := exec.Command("/bin/sh", "-c", "sleep 2; true")
		cmd.Stdin = strings.NewReader("")
		return cmd
	}
	tests := []struct {
		name   string
		rule   string
		fire   func(t *testing.T) *exec.Cmd
		benign func(t *testing.T) *exec.Cmd
		// twinExe ends the path of the benign twin's executable that the
		// rule looks at.
		twinExe string
	}{
		{
			name: "reverse shell", rule: RuleReverseShell,
			fire: socketStdin, benign: pipeStdin, twinExe: "/dash",
		},
		{
			name: "memfd exec", rule: RuleMemfdExec,
			fire: func(t *testing.T) *exec.Cmd { return helperCmd("memfd", "/bin/sleep", "sleep", "2") },
			benign: func(t *testing.T) *exec.Cmd {
				return exec.Command(filepath.Join(priv, "sleep"), "2")
			},
			twinExe: "/sleep",
		},
		{
			name: "deleted binary exec", rule: RuleDeletedBinaryExec,
			fire: func(t *testing.T) *exec.Cmd {
				p := filepath.Join(priv, "doomed")
				copyFile(t, "/bin/sleep", p)
				return helperCmd("deleted", p, "doomed", "2")
			},
			benign:  func(t *testing.T) *exec.Cmd { return exec.Command(filepath.Join(priv, "sleep"), "2") },
			twinExe: "/sleep",
		},
		{
			name: "world-writable exec", rule: RuleWorldWritableExec,
			fire: func(t *testing.T) *exec.Cmd {
				p := filepath.Join("/dev/shm", fmt.Sprintf("vigil-test-sleep-%d", os.Getpid()))
				copyFile(t, "/bin/sleep", p)
				t.Cleanup(func() { os.Remove(p) })
				return exec.Command(p, "2")
			},
			benign:  func(t *testing.T) *exec.Cmd { return exec.Command(filepath.Join(priv, "sleep"), "2") },
			twinExe: "/sleep",
		},
		{
			name: "service spawns shell", rule: RuleServiceShell,
			// "nginx" forks and runs sh; the trailing true keeps it from
			// exec'ing sh in place.
			fire: func(t *testing.T) *exec.Cmd {
				return exec.Command(filepath.Join(priv, "nginx"), "-c", "/bin/sh -c 'sleep 2; true'; true")
			},
			benign: func(t *testing.T) *exec.Cmd {
				return exec.Command(filepath.Join(priv, "worker"), "-c", "/bin/sh -c 'sleep 2; true'; true")
			},
			twinExe: "/dash",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			isRule := func(e sdktest.Event) bool { return e.Alert && e.Str("rule_id") == tt.rule }
			fire := run(t, tt.fire(t))
			benign := run(t, tt.benign(t))
			alerts := h.WaitEvents(func(e sdktest.Event) bool { return isRule(e) && descendant(e, fire) }, 1, 10*time.Second)
			a := alerts[0]
			if a.Severity > 4 || a.Str("rule") == "" || a.Str("exe") == "" {
				t.Errorf("alert lacks severity, summary or exe: %v", a)
			}
			// The benign twin's shell or binary has been handled once its
			// exec event is out; no alert may name it.
			h.WaitEvents(func(e sdktest.Event) bool {
				return e.Type == "exec" && descendant(e, benign) && strings.HasSuffix(e.Str("exe"), tt.twinExe)
			}, 1, 10*time.Second)
			for _, e := range h.Events() {
				if isRule(e) && descendant(e, benign) {
					t.Errorf("benign twin fired %s: %v", tt.rule, e)
				}
			}
		})
	}
	if h.Counters()[CounterAlerts] == 0 {
		t.Error("alerts counter stayed at zero")
	}
}

// descendant reports whether the event is about pid or a child of it.
func descendant(e sdktest.Event, pid int) bool {
	return e.Int("pid") == int64(pid) || e.Int("ppid") == int64(pid)
}

func TestAllowRule(t *testing.T) {
	priv := privateDir(t)
	copyFile(t, "/usr/bin/dash", filepath.Join(priv, "nginx"))
	h := startPlugin(t, `{"detections": {"allow": [{"rule": "procmon.service_shell", "parent_exe": "`+priv+`/nginx"}]}}`)
	pid := run(t, exec.Command(filepath.Join(priv, "nginx"), "-c", "/bin/sh -c 'sleep 2; true'; true"))
	h.WaitEvents(func(e sdktest.Event) bool {
		return e.Type == "exec" && descendant(e, pid) && strings.HasSuffix(e.Str("exe"), "/dash")
	}, 1, 10*time.Second)
	for _, e := range h.Events() {
		if e.Alert && descendant(e, pid) {
			t.Errorf("allowed execution raised %v", e)
		}
	}
}

func TestReconfigureWhileRunning(t *testing.T) {
	h := startPlugin(t, `{}`)
	// An invalid config is refused and the running one stays.
	err := h.Configure(`{"queue_size": 12}`)
	if err == nil || !strings.Contains(err.Error(), "procmon.queue_size must be between 1024 and 1048576 (got 12)") {
		t.Fatalf("invalid config: err = %v", err)
	}
	pid := run(t, exec.Command("/bin/sleep", "0.1"))
	h.WaitEvents(execOf(pid), 1, 10*time.Second)
	// A valid one takes effect: exits are now emitted.
	if err := h.Configure(`{"emit": ["exec", "exit"]}`); err != nil {
		t.Fatal(err)
	}
	// Events arrive in batches, so look for the exit of any process
	// started since the change.
	pids := map[int64]bool{}
	h.WaitFor("exit events after the config change", 10*time.Second, func() bool {
		cmd := exec.Command("/bin/true")
		if err := cmd.Run(); err != nil {
			t.Fatal(err)
		}
		pids[int64(cmd.Process.Pid)] = true
		for _, e := range h.Events() {
			if e.Type == "exit" && pids[e.Int("pid")] {
				return e.Int("exit_code") == 0
			}
		}
		return false
	})
}
