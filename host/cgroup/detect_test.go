package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	tests := []struct {
		name string
		file string
		want System
	}{
		{
			name: "hybrid, this machine: v1 controllers and cgroup2 at unified",
			file: "mountinfo-hybrid.txt",
			want: System{Mode: ModeHybrid, V2: "/sys/fs/cgroup/unified", V1: map[string]string{
				"cpu": "/sys/fs/cgroup/cpu", "cpuacct": "/sys/fs/cgroup/cpuacct", "memory": "/sys/fs/cgroup/memory",
				"pids": "/sys/fs/cgroup/pids", "freezer": "/sys/fs/cgroup/freezer"}},
		},
		{
			name: "unified",
			file: "mountinfo-unified.txt",
			want: System{Mode: ModeUnified, V2: "/sys/fs/cgroup", V1: map[string]string{}},
		},
		{
			name: "legacy with cpu,cpuacct in one hierarchy and an escaped mount point",
			file: "mountinfo-legacy.txt",
			want: System{Mode: ModeLegacy, V1: map[string]string{
				"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct", "memory": "/sys/fs/cgroup/memory",
				"pids": "/sys/fs/cgroup/pids", "freezer": "/sys/fs/cgroup/with space"}},
		},
		{
			name: "no cgroups",
			file: "mountinfo-none.txt",
			want: System{Mode: ModeUnavailable, V1: map[string]string{}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := ParseMountinfo(f)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseMountinfo = %+v\nwant %+v", got, tt.want)
			}
		})
	}
	if _, err := ParseMountinfo(strings.NewReader("1 2 3\n")); !errors.Is(err, ErrFormat) {
		t.Errorf("short line: err = %v, want ErrFormat", err)
	}
}

func TestProcCgroups(t *testing.T) {
	b, err := os.ReadFile("testdata/proc-cgroup-hybrid.txt")
	if err != nil {
		t.Fatal(err)
	}
	got, err := procCgroups(strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"name=systemd": "/", "pids": "/vigil/procmon", "memory": "/system.slice/vigil.service/vigil/procmon",
		"cpu": "/vigil/procmon", "cpuacct": "/vigil/procmon", "": "/",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("procCgroups = %v, want %v", got, want)
	}
	if _, err := procCgroups(strings.NewReader("garbage\n")); !errors.Is(err, ErrFormat) {
		t.Errorf("garbage: err = %v, want ErrFormat", err)
	}
}

func TestBasePath(t *testing.T) {
	tests := []struct {
		name, parent, own, want string
	}{
		{name: "relative under the root", parent: "vigil", own: "/", want: "/vigil"},
		{name: "relative under a systemd service", parent: "vigil", own: "/system.slice/vigil.service", want: "/system.slice/vigil.service/vigil"},
		{name: "re-executed host already in its group", parent: "vigil", own: "/system.slice/vigil.service/vigil/host", want: "/system.slice/vigil.service/vigil"},
		{name: "absolute ignores the own group", parent: "/hids/vigil", own: "/user.slice", want: "/hids/vigil"},
		{name: "own unknown", parent: "vigil", own: "", want: "/vigil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &Manager{cfg: Config{Parent: tt.parent}}
			if got := m.basePath(tt.own); got != tt.want {
				t.Errorf("basePath(%q) = %q, want %q", tt.own, got, tt.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "zero is valid", cfg: Config{}},
		{name: "nested parent", cfg: Config{Parent: "hids/vigil", Version: "v2"}},
		{name: "dot dot", cfg: Config{Parent: "../escape"}, want: `cgroup.parent must be a path of names without . or .. (got "../escape")`},
		{name: "bad version", cfg: Config{Version: "v3"}, want: `cgroup.version must be one of auto, v1, v2 (got "v3")`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if (err == nil) != (tt.want == "") || (err != nil && err.Error() != tt.want) {
				t.Errorf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}
