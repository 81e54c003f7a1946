package agent_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// testCgroupParent is the cgroup parent every agent of this test process
// uses. It is unique to the process: agents of two test processes (go test
// runs packages in parallel) would otherwise clean up each other's groups
// as stale, killing the other test binary, and tests must never touch the
// production parent ("vigil") of a real host on the same machine.
var testCgroupParent = fmt.Sprintf("vigil-test-%d", os.Getpid())

// removeTestCgroupParent moves this process back out of the test parent's
// host group (agents move the whole process into it) and removes the
// parent in every hierarchy. The agents have removed their plugin groups
// already; what is left is empty.
func removeTestCgroupParent() {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return
	}
	var outer []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if i := strings.Index(f[2], "/"+testCgroupParent); i >= 0 {
			outer = append(outer, f[2][:i])
		}
	}
	mounts, _ := filepath.Glob("/sys/fs/cgroup/*")
	mounts = append(mounts, "/sys/fs/cgroup")
	for _, m := range mounts {
		if fi, err := os.Lstat(m); err != nil || !fi.IsDir() {
			continue // controller symlinks such as cpu -> cpu,cpuacct
		}
		for _, o := range outer {
			parent := filepath.Join(m, o, testCgroupParent)
			if _, err := os.Stat(parent); err != nil {
				continue
			}
			_ = os.WriteFile(filepath.Join(m, o, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
			subs, _ := os.ReadDir(parent)
			for _, s := range subs {
				if s.IsDir() {
					_ = os.Remove(filepath.Join(parent, s.Name()))
				}
			}
			_ = os.Remove(parent)
		}
	}
}
