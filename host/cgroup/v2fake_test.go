package cgroup

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeV2 builds a cgroup2 file layout under a temp dir, with a fake /proc
// whose mount table points at it. The real unified mount on this hybrid
// machine has no cpu, memory or pids controller (they are bound to v1), so
// v2 limits and accounting are checked on this layout instead: it shows what
// the package writes and how it reads the kernel's files, not that the
// kernel enforces them.
func fakeV2(t *testing.T) (Config, string) {
	t.Helper()
	root := t.TempDir()
	mnt := filepath.Join(root, "cgroup")
	proc := filepath.Join(root, "proc")
	for _, d := range []string{mnt, filepath.Join(mnt, "vigil"), filepath.Join(proc, "self"), filepath.Join(proc, "4242")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		filepath.Join(mnt, "cgroup.controllers"):     "cpuset cpu io memory hugetlb pids rdma misc\n",
		filepath.Join(mnt, "cgroup.subtree_control"): "",
		// The kernel makes this file with the directory.
		filepath.Join(mnt, "vigil", "cgroup.subtree_control"): "",
		filepath.Join(proc, "self", "mountinfo"):              "27 24 0:25 / " + mnt + " rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n",
		filepath.Join(proc, "self", "cgroup"):                 "0::/\n",
		filepath.Join(proc, "4242", "cgroup"):                 "0::/vigil/procmon\n",
	}
	for p, c := range files {
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return Config{ProcRoot: proc}, mnt
}

func TestV2FakeLayout(t *testing.T) {
	cfg, mnt := fakeV2(t)
	m, err := NewManager(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Version() != V2 || m.System().Mode != ModeUnified {
		t.Fatalf("version %s mode %s, want v2 unified", m.Version(), m.System().Mode)
	}
	g, err := m.Create("procmon", Limits{CPUQuotaPercent: 5, MemoryBytes: 64 << 20, Pids: 100})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mnt, "vigil", "procmon")
	if g.Path() != dir {
		t.Fatalf("Path = %s, want %s", g.Path(), dir)
	}
	check := func(name, want string) {
		t.Helper()
		if got := strings.TrimSpace(readFile(t, filepath.Join(dir, name))); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	check("cpu.max", "5000 100000")
	check("memory.max", "67108864")
	check("pids.max", "100")
	for _, d := range []string{mnt, filepath.Join(mnt, "vigil")} {
		if got := readFile(t, filepath.Join(d, "cgroup.subtree_control")); got != "+cpu +memory +pids" {
			t.Errorf("%s/cgroup.subtree_control = %q, want +cpu +memory +pids", d, got)
		}
	}

	t.Run("update to unlimited", func(t *testing.T) {
		if err := g.Update(Limits{}); err != nil {
			t.Fatal(err)
		}
		check("cpu.max", "max 100000")
		check("memory.max", "max")
		check("pids.max", "max")
	})

	t.Run("stats", func(t *testing.T) {
		for _, f := range []string{"cpu.stat", "memory.stat", "memory.current", "memory.events", "pids.current"} {
			b, err := os.ReadFile(filepath.Join("testdata", "v2group", f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := g.Stats()
		if err != nil {
			t.Fatal(err)
		}
		want := Stats{CPU: 1500 * time.Millisecond, MemoryCurrent: 53477376, MemoryRSS: 41943040, OOMKills: 2,
			ThrottledPeriods: 120, Throttled: 800 * time.Millisecond, Tasks: 7}
		if got != want {
			t.Errorf("Stats = %+v\nwant %+v", got, want)
		}
	})

	t.Run("verify", func(t *testing.T) {
		if err := g.Verify(4242); err != nil {
			t.Errorf("Verify(4242): %v", err)
		}
		other, err := m.Create("netmon", Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if err := other.Verify(4242); !errors.Is(err, ErrNotInGroup) {
			t.Errorf("Verify of a pid in another group: %v, want ErrNotInGroup", err)
		}
	})

	t.Run("prepare spawn sets the cgroup fd", func(t *testing.T) {
		cmd := exec.Command("true")
		restore, err := g.PrepareSpawn(cmd)
		if err != nil {
			t.Fatal(err)
		}
		if !cmd.SysProcAttr.UseCgroupFD || cmd.SysProcAttr.CgroupFD <= 0 {
			t.Errorf("SysProcAttr = %+v, want UseCgroupFD with a descriptor", cmd.SysProcAttr)
		}
		if err := restore(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("kill writes cgroup.kill", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := g.Kill(); err != nil {
			t.Fatal(err)
		}
		check("cgroup.kill", "1")
	})
}

func TestUnavailable(t *testing.T) {
	tests := []struct {
		name      string
		mountinfo string
		cfg       Config
	}{
		{name: "no cgroup mounts", mountinfo: "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"},
		{name: "v2 without cpu and memory, v1 absent", mountinfo: "27 24 0:25 / MNT rw - cgroup2 cgroup2 rw\n"},
		{name: "v1 forced without v1 controllers", mountinfo: "27 24 0:25 / MNT rw - cgroup2 cgroup2 rw\n", cfg: Config{Version: "v1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			mnt := filepath.Join(root, "cg")
			os.MkdirAll(filepath.Join(root, "proc", "self"), 0o755)
			os.MkdirAll(mnt, 0o755)
			os.WriteFile(filepath.Join(mnt, "cgroup.controllers"), []byte("hugetlb\n"), 0o644)
			os.WriteFile(filepath.Join(root, "proc", "self", "mountinfo"), []byte(strings.ReplaceAll(tt.mountinfo, "MNT", mnt)), 0o644)
			os.WriteFile(filepath.Join(root, "proc", "self", "cgroup"), []byte("0::/\n"), 0o644)
			tt.cfg.ProcRoot = filepath.Join(root, "proc")
			if _, err := NewManager(tt.cfg, nil); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("NewManager: %v, want ErrUnavailable", err)
			}
		})
	}
}

// TestV1FakeMissingCPU: a v1 host with memory and cpuacct but no cpu
// controller. A quota cannot be applied there, and saying so beats silently
// running the plugin unthrottled. Faked because this machine has every v1
// controller.
func TestV1FakeMissingCPU(t *testing.T) {
	root := t.TempDir()
	proc := filepath.Join(root, "proc")
	for _, d := range []string{filepath.Join(root, "memory"), filepath.Join(root, "cpuacct"), filepath.Join(proc, "self")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mountinfo := "30 25 0:26 / " + root + "/memory rw - cgroup cgroup rw,memory\n" +
		"31 25 0:27 / " + root + "/cpuacct rw - cgroup cgroup rw,cpuacct\n"
	if err := os.WriteFile(filepath.Join(proc, "self", "mountinfo"), []byte(mountinfo), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, "self", "cgroup"), []byte("4:memory:/\n2:cpuacct:/\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(Config{ProcRoot: proc}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Version() != V1 || m.System().Mode != ModeLegacy {
		t.Fatalf("version %s mode %s", m.Version(), m.System().Mode)
	}
	if _, err := m.Create("quota", Limits{CPUQuotaPercent: 5}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("quota without the cpu controller: %v, want ErrUnavailable", err)
	}
	g, err := m.Create("mem", Limits{MemoryBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(root, "memory", "vigil", "mem", "memory.limit_in_bytes")); got != "67108864" {
		t.Errorf("memory.limit_in_bytes = %q, want 67108864", got)
	}
	if err := g.Update(Limits{CPUQuotaPercent: 1}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Update with a quota: %v, want ErrUnavailable", err)
	}
}
