package procmon

import (
	"bytes"
	"path"

	"github.com/vigil-hids/vigil/sdk"
)

// Rule ids. They are part of procmon's interface: alerts carry them in the
// rule_id field, and configs name them in allow rules. Never renumber.
const (
	RuleReverseShell      = "procmon.reverse_shell"
	RuleMemfdExec         = "procmon.memfd_exec"
	RuleDeletedBinaryExec = "procmon.deleted_binary_exec"
	RuleWorldWritableExec = "procmon.world_writable_exec"
	RuleServiceShell      = "procmon.service_shell"
)

// ruleInfo describes each rule.
var rules = [...]struct {
	id       string
	severity sdk.Severity
	summary  string
}{
	{RuleReverseShell, sdk.SevCritical, "shell started with a socket on stdin or stdout"},
	{RuleMemfdExec, sdk.SevCritical, "executable run from an anonymous memory file (memfd)"},
	{RuleDeletedBinaryExec, sdk.SevError, "executable run after its file was deleted"},
	{RuleWorldWritableExec, sdk.SevWarning, "executable run from a world-writable directory"},
	{RuleServiceShell, sdk.SevCritical, "web server or database started a shell"},
}

// RuleIDs returns every rule id.
func RuleIDs() []string {
	ids := make([]string, len(rules))
	for i, r := range rules {
		ids[i] = r.id
	}
	return ids
}

func knownRule(id string) bool {
	for _, r := range rules {
		if r.id == id {
			return true
		}
	}
	return false
}

func ruleIndex(id string) int {
	for i, r := range rules {
		if r.id == id {
			return i
		}
	}
	return -1
}

// detector holds a config's rules in the form the hot path wants.
type detector struct {
	disabled     [len(rules)]bool
	shells       [][]byte
	services     [][]byte
	writableDirs [][]byte
	allow        []AllowRule
}

func newDetector(d *Detections) *detector {
	det := &detector{allow: d.Allow}
	for _, id := range d.Disabled {
		if i := ruleIndex(id); i >= 0 {
			det.disabled[i] = true
		}
	}
	for _, s := range d.Shells {
		det.shells = append(det.shells, []byte(s))
	}
	for _, s := range d.Services {
		det.services = append(det.services, []byte(s))
	}
	for _, s := range d.WritableDirs {
		det.writableDirs = append(det.writableDirs, []byte(s))
	}
	return det
}

// execFacts is what the rules look at; byte slices point into the
// worker's buffers.
type execFacts struct {
	haveExe        bool
	exe, cmdline   []byte
	parentExe      []byte
	grandparentExe []byte
	stdin, stdout  []byte
}

// baseName returns the last element of an executable path, without the
// " (deleted)" marker.
func baseName(exe []byte) []byte {
	exe = bytes.TrimSuffix(exe, []byte(" (deleted)"))
	if i := bytes.LastIndexByte(exe, '/'); i >= 0 {
		return exe[i+1:]
	}
	return exe
}

func inList(name []byte, list [][]byte) bool {
	for _, s := range list {
		if bytes.Equal(name, s) {
			return true
		}
	}
	return false
}

// isService reports whether name is a service, allowing version or pool
// suffixes such as php-fpm8.2 or postgres: the list entry must be a prefix
// followed by nothing, a digit, a dot or a dash.
func (d *detector) isService(name []byte) bool {
	for _, s := range d.services {
		if bytes.HasPrefix(name, s) {
			rest := name[len(s):]
			if len(rest) == 0 || rest[0] == '.' || rest[0] == '-' || (rest[0] >= '0' && rest[0] <= '9') {
				return true
			}
		}
	}
	return false
}

func (d *detector) isShell(exe []byte) bool { return inList(baseName(exe), d.shells) }

// needsFDs reports whether the rules need the standard descriptors of a
// process running exe (only shells do), so others are spared the reads.
func (d *detector) needsFDs(exe []byte) bool {
	return !d.disabled[0] && d.isShell(exe)
}

// match appends to dst the indexes of rules that fire for f and are not
// allowed.
func (d *detector) match(dst []int, f *execFacts) []int {
	fire := func(i int) {
		if !d.disabled[i] && !d.allowed(rules[i].id, f) {
			dst = append(dst, i)
		}
	}
	shell := d.isShell(f.exe)
	if shell && (bytes.HasPrefix(f.stdin, []byte("socket:")) || bytes.HasPrefix(f.stdout, []byte("socket:"))) {
		fire(0)
	}
	deleted := bytes.HasSuffix(f.exe, []byte(" (deleted)"))
	switch {
	case bytes.HasPrefix(f.exe, []byte("/memfd:")):
		fire(1)
	case deleted:
		fire(2)
	}
	for _, dir := range d.writableDirs {
		if bytes.HasPrefix(f.exe, dir) {
			fire(3)
			break
		}
	}
	if shell {
		// nginx -> sh, or nginx -> sh -c -> bash.
		p := f.parentExe
		if d.isShell(p) && len(f.grandparentExe) > 0 {
			p = f.grandparentExe
		}
		if len(p) > 0 && d.isService(baseName(p)) {
			fire(4)
		}
	}
	return dst
}

func (d *detector) allowed(id string, f *execFacts) bool {
	for i := range d.allow {
		a := &d.allow[i]
		if a.Rule != "*" && a.Rule != id {
			continue
		}
		if globMatch(a.Exe, f.exe) && globMatch(a.ParentExe, f.parentExe) && globMatch(a.Cmdline, f.cmdline) {
			return true
		}
	}
	return false
}

// globMatch matches an optional pattern; rarely reached (only when a rule
// fires), so the string conversion's allocation does not matter.
func globMatch(pattern string, b []byte) bool {
	if pattern == "" {
		return true
	}
	ok, _ := path.Match(pattern, string(b))
	return ok
}
