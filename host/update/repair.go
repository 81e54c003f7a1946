package update

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/coreos/go-semver/semver"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/supervisor"
	"github.com/vigil-hids/vigil/signing"
)

// ErrDamaged: an installed binary no longer has its signed sha256 (go-plugin
// SecureConfig refuses to start it); it is removed and fetched again.
var ErrDamaged = errors.New("update: installed binary damaged")

// fileSHA256 hashes the file at path ("" if it cannot be read).
func fileSHA256(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}

// adopt records the running binary, which has the signed sha256 of
// version, as that version without restarting it: a rollback release
// (1.2.0+rollback.1) of the binary a host never left, say.
func (u *Updater) adopt(plugin, target, version string) {
	u.mu.Lock()
	r := u.record(plugin)
	if b := u.run[plugin]; b != nil {
		c := *b
		c.Version = version
		u.run[plugin] = &c
		r.Current = &c
	}
	if r.Highest == "" || semver.New(r.Highest).LessThan(*semver.New(version)) {
		r.Highest = version
	}
	r.Failed = nil
	err := saveState(u.cfg.StateDir, u.st)
	u.mu.Unlock()
	if err != nil {
		u.log.Error("saving installed releases", "err", err)
	}
	u.log.Info("plugin update: the running binary already has the signed sha256; recorded without a restart",
		"plugin", plugin, "version", version)
	u.collect(plugin)
	u.report(plugin, target, api.UpdateInstalled, nil)
}

// keptCopy places a kept previous binary with m's sha256 under m's version
// (a hard link, then the usual rename and fsync), so a rollback release of
// a kept version installs without a download.
func (u *Updater) keptCopy(plugin string, m signing.Manifest) (Binary, bool) {
	u.mu.Lock()
	var from []Binary
	if r := u.st.Plugins[plugin]; r != nil {
		from = append(from, r.Previous...)
	}
	u.mu.Unlock()
	for _, p := range from {
		if p.SHA256 != m.SHA256 {
			continue
		}
		tmp := filepath.Join(u.cfg.Dir, plugin, ".download-link-"+m.SHA256[:16])
		os.Remove(tmp)
		if err := os.Link(p.Path, tmp); err != nil {
			continue
		}
		if fileSHA256(tmp) != m.SHA256 {
			os.Remove(tmp)
			continue
		}
		b, err := Place(tmp, u.cfg.Dir, m)
		if err != nil {
			os.Remove(tmp)
			continue
		}
		return b, true
	}
	return Binary{}, false
}

// observeDamage tells the worker of every failed start of plugin.
func (u *Updater) observeDamage(plugin string, damage chan<- string) (cancel func()) {
	return u.cfg.Plugins.Observe(plugin, func(ev supervisor.Lifecycle) {
		if ev.Kind != supervisor.LifeStartFailed {
			return
		}
		select {
		case damage <- ev.Path:
		default:
		}
	})
}

// repair handles a failed start of path: when path is the installed
// (committed) binary and its content no longer has the signed sha256, the
// damaged file is removed, the newest intact kept version (or the config
// file's binary) runs, and the damaged version is fetched again. It
// reports whether it did so. A gate's candidate is the gate's business.
func (u *Updater) repair(plugin, path string) bool {
	u.mu.Lock()
	r := u.st.Plugins[plugin]
	cur := u.run[plugin]
	if r == nil || r.Current == nil || cur == nil || cur.Path != path || r.Current.Path != path {
		u.mu.Unlock()
		return false
	}
	bad := *cur
	u.mu.Unlock()
	if fileSHA256(path) == bad.SHA256 {
		return false // intact: the start failed for another reason
	}
	var rmErr error
	if rel, err := filepath.Rel(u.cfg.Dir, path); err == nil && filepath.IsLocal(rel) {
		rmErr = os.RemoveAll(filepath.Dir(path))
	}
	u.mu.Lock()
	var back *Binary
	var keep []Binary
	for _, p := range r.Previous {
		if back == nil && fileSHA256(p.Path) == p.SHA256 {
			b := p
			back = &b
			continue
		}
		keep = append(keep, p)
	}
	r.Current, r.Previous = back, keep
	if r.Failed != nil && r.Failed.Version == bad.Version {
		r.Failed = nil
	}
	u.run[plugin] = back
	if u.repairs == nil {
		u.repairs = map[string]string{}
	}
	u.repairs[plugin] = bad.Version
	serr := saveState(u.cfg.StateDir, u.st)
	u.mu.Unlock()
	if serr != nil {
		u.log.Error("saving installed releases", "err", serr)
	}
	now := "the config file's binary"
	if back != nil {
		now = "version " + back.Version
	}
	err := fmt.Errorf("%w: %s %s at %s no longer has its signed sha256 %s; removed, %s runs meanwhile, fetching it again",
		ErrDamaged, plugin, bad.Version, path, bad.SHA256, now)
	if rmErr != nil {
		err = fmt.Errorf("%w (removing it: %v)", err, rmErr)
	}
	u.report(plugin, bad.Version, api.UpdateFailed, err)
	u.cfg.Plugins.Refresh(plugin)
	return true
}
