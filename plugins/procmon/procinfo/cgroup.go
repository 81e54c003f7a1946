package procinfo

// Container runtimes named in a Container.
const (
	RuntimeDocker     = "docker"
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "cri-o"
	RuntimePodman     = "podman"
	// RuntimeKubernetes is a kubernetes container whose runtime the
	// cgroup path does not name (the cgroupfs driver's /kubepods/...).
	RuntimeKubernetes = "kubernetes"
)

// Container is the container a process runs in, as far as its cgroup paths
// tell. ID and PodUID point into the parsed buffer.
type Container struct {
	Runtime string // one of the Runtime constants, "" if not in a container
	ID      []byte // 64 hex digits
	PodUID  []byte // kubernetes pod uid with dashes, if any
}

// scope prefixes of container cgroups under systemd, and their runtime.
var scopePrefixes = [...]struct{ prefix, runtime string }{
	{"docker-", RuntimeDocker},
	{"cri-containerd-", RuntimeContainerd},
	{"crio-", RuntimeCRIO},
	{"libpod-", RuntimePodman},
	{"nerdctl-", RuntimeContainerd},
	{"containerd-", RuntimeContainerd},
}

// ParseCgroup finds the container in the contents of a /proc/PID/cgroup
// file. Both formats are understood: v1 lines "ID:controllers:/path" and
// the v2 line "0::/path". Paths recognised include
//
//	/docker/<id>                                  docker, cgroupfs driver
//	/system.slice/docker-<id>.scope               docker, systemd driver
//	/kubepods/burstable/pod<uid>/<id>             kubernetes, cgroupfs driver
//	/kubepods.slice/.../kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope
//	/kubepods.slice/.../crio-<id>.scope           cri-o
//	/machine.slice/libpod-<id>.scope              podman
//	/libpod_parent/libpod-<id>                    podman, cgroupfs
//	/default/<id>                                 containerd (nerdctl / ctr namespace)
//
// It rewrites the pod uid's underscores (systemd's escaping) to dashes in
// place, so b must be writable. It never allocates.
func ParseCgroup(b []byte, c *Container) {
	*c = Container{}
	for len(b) > 0 {
		line := b
		if i := indexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		// Skip "hierarchy-ID:controllers:" to the path.
		colons := 0
		for i, ch := range line {
			if ch == ':' {
				if colons++; colons == 2 {
					line = line[i+1:]
					break
				}
			}
		}
		if colons < 2 {
			continue
		}
		parsePath(line, c)
		if c.ID != nil {
			return
		}
	}
}

func parsePath(p []byte, c *Container) {
	var prev []byte
	for len(p) > 0 {
		var comp []byte
		if i := indexByte(p, '/'); i >= 0 {
			comp, p = p[:i], p[i+1:]
		} else {
			comp, p = p, nil
		}
		if len(comp) == 0 {
			continue
		}
		if uid := podUID(comp); uid != nil {
			c.PodUID = uid
		}
		base := trimSuffix(trimSuffix(comp, ".scope"), ".slice")
		for _, sp := range scopePrefixes {
			if hasPrefix(base, sp.prefix) && isContainerID(base[len(sp.prefix):]) {
				c.Runtime, c.ID = sp.runtime, base[len(sp.prefix):]
				return
			}
		}
		if isContainerID(base) {
			c.ID = base
			switch {
			case string(prev) == "docker":
				c.Runtime = RuntimeDocker
			case string(prev) == "libpod_parent" || hasPrefix(prev, "libpod"):
				c.Runtime = RuntimePodman
			case c.PodUID != nil:
				c.Runtime = RuntimeKubernetes
			default:
				c.Runtime = RuntimeContainerd
			}
			return
		}
		prev = comp
	}
	if c.PodUID != nil && c.Runtime == "" {
		c.Runtime = RuntimeKubernetes
	}
}

// podUID returns the uid in a "pod<uid>" or "kubepods-<qos>-pod<uid>.slice"
// component, with underscores turned into dashes.
func podUID(comp []byte) []byte {
	i := lastIndex(comp, "pod")
	if i < 0 || (i > 0 && comp[i-1] != '-') {
		return nil
	}
	uid := trimSuffix(comp[i+3:], ".slice")
	if len(uid) != 36 {
		return nil
	}
	for j, ch := range uid {
		switch {
		case j == 8 || j == 13 || j == 18 || j == 23:
			if ch != '-' && ch != '_' {
				return nil
			}
			uid[j] = '-'
		case !isHex(ch):
			return nil
		}
	}
	return uid
}

func isHex(ch byte) bool { return ch >= '0' && ch <= '9' || ch >= 'a' && ch <= 'f' }

func isContainerID(b []byte) bool {
	if len(b) != 64 {
		return false
	}
	for _, ch := range b {
		if !isHex(ch) {
			return false
		}
	}
	return true
}

func trimSuffix(b []byte, s string) []byte {
	if len(b) >= len(s) && string(b[len(b)-len(s):]) == s {
		return b[:len(b)-len(s)]
	}
	return b
}

func lastIndex(b []byte, s string) int {
	for i := len(b) - len(s); i >= 0; i-- {
		if string(b[i:i+len(s)]) == s {
			return i
		}
	}
	return -1
}
