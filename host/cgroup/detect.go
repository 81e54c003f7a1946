package cgroup

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Mode is how the host's cgroup hierarchies are laid out.
type Mode int

// Cgroup layouts.
const (
	// ModeUnavailable: no cgroup file system is mounted.
	ModeUnavailable Mode = iota
	// ModeLegacy: cgroup v1 controllers only.
	ModeLegacy
	// ModeHybrid: cgroup v1 controllers plus a cgroup v2 mount (usually
	// /sys/fs/cgroup/unified, holding few or no controllers).
	ModeHybrid
	// ModeUnified: cgroup v2 only.
	ModeUnified
)

func (m Mode) String() string {
	switch m {
	case ModeLegacy:
		return "legacy (v1)"
	case ModeHybrid:
		return "hybrid (v1 + v2)"
	case ModeUnified:
		return "unified (v2)"
	}
	return "unavailable"
}

// Version is the cgroup API a Manager drives.
type Version int

// Cgroup versions.
const (
	V1 Version = 1
	V2 Version = 2
)

func (v Version) String() string { return fmt.Sprintf("v%d", int(v)) }

// The v1 controllers Vigil uses. cpu and cpuacct may be one hierarchy.
const (
	ctlCPU     = "cpu"
	ctlCPUAcct = "cpuacct"
	ctlMemory  = "memory"
	ctlPids    = "pids"
	ctlFreezer = "freezer"
)

var v1Controllers = []string{ctlCPU, ctlCPUAcct, ctlMemory, ctlPids, ctlFreezer}

// System describes the cgroup file systems of the host.
type System struct {
	Mode Mode
	// V1 maps each mounted v1 controller Vigil uses to its mount point.
	V1 map[string]string
	// V2 is the cgroup2 mount point, "" if none.
	V2 string
	// V2Controllers are the controllers available at the cgroup2 root
	// (its cgroup.controllers).
	V2Controllers []string
}

// HasV2 reports whether the cgroup2 mount has every named controller.
func (s System) HasV2(controllers ...string) bool {
	if s.V2 == "" {
		return false
	}
	for _, c := range controllers {
		if !slices.Contains(s.V2Controllers, c) {
			return false
		}
	}
	return true
}

// Detect reads procRoot/self/mountinfo ("" means /proc) and the cgroup2
// root's cgroup.controllers.
func Detect(procRoot string) (System, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	f, err := os.Open(filepath.Join(procRoot, "self", "mountinfo"))
	if err != nil {
		return System{}, fmt.Errorf("reading mount table: %w", err)
	}
	defer f.Close()
	sys, err := ParseMountinfo(f)
	if err != nil {
		return System{}, err
	}
	if sys.V2 != "" {
		b, err := os.ReadFile(filepath.Join(sys.V2, "cgroup.controllers"))
		if err != nil {
			return System{}, fmt.Errorf("reading cgroup2 controllers: %w", err)
		}
		sys.V2Controllers = strings.Fields(string(b))
	}
	return sys, nil
}

// ParseMountinfo reads a /proc/PID/mountinfo table and returns the cgroup
// mounts in it (System.V2Controllers is left empty).
func ParseMountinfo(r io.Reader) (System, error) {
	sys := System{V1: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 6 || len(fields) < sep+4 {
			if len(fields) > 0 {
				return System{}, fmt.Errorf("%w: mountinfo line %q", ErrFormat, sc.Text())
			}
			continue
		}
		mountPoint := unescapeMount(fields[4])
		switch fields[sep+1] {
		case "cgroup2":
			if sys.V2 == "" {
				sys.V2 = mountPoint
			}
		case "cgroup":
			for _, opt := range strings.Split(fields[sep+3], ",") {
				if slices.Contains(v1Controllers, opt) {
					if _, dup := sys.V1[opt]; !dup {
						sys.V1[opt] = mountPoint
					}
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return System{}, fmt.Errorf("reading mount table: %w", err)
	}
	switch {
	case len(sys.V1) > 0 && sys.V2 != "":
		sys.Mode = ModeHybrid
	case len(sys.V1) > 0:
		sys.Mode = ModeLegacy
	case sys.V2 != "":
		sys.Mode = ModeUnified
	}
	return sys, nil
}

// unescapeMount undoes the octal escapes (\040 for a space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			v := 0
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + int(c-'0')
			}
			if ok {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// procCgroups parses a /proc/PID/cgroup (or /proc/thread-self/cgroup)
// table: it maps each v1 controller to its path, and "" to the v2 path.
func procCgroups(r io.Reader) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		// hierarchy-ID:controller-list:cgroup-path
		id, rest, ok1 := strings.Cut(line, ":")
		ctls, path, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 || id == "" {
			return nil, fmt.Errorf("%w: cgroup line %q", ErrFormat, line)
		}
		if ctls == "" {
			out[""] = path
			continue
		}
		for _, c := range strings.Split(ctls, ",") {
			out[c] = path
		}
	}
	return out, sc.Err()
}

func readProcCgroups(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m, err := procCgroups(f)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return m, nil
}
