package update

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-semver/semver"

	"github.com/vigil-hids/vigil/internal/atomicfile"
	"github.com/vigil-hids/vigil/signing"
)

// Spread is host's moment within window to start downloading a release:
// a stable hash of host name and release, so a fleet's downloads spread
// evenly and one host always waits the same.
func Spread(host, release, version string, window time.Duration) time.Duration {
	if window <= 0 {
		return 0
	}
	h := sha256.Sum256([]byte(host + "\x00" + release + "\x00" + version))
	return time.Duration(binary.BigEndian.Uint64(h[:8]) % uint64(window))
}

// BinaryPath is where a release's binary is installed:
// {dir}/{plugin}/{version}/{plugin}.
func BinaryPath(dir, plugin, version string) string {
	return filepath.Join(dir, plugin, version, plugin)
}

// Place renames a verified download into {dir}/{plugin}/{version}/ (a
// 0755 directory, the binary 0755, owned by the host's user: root on a
// real host) and fsyncs the directories, so a crash leaves either no
// release or a complete one.
func Place(tmp, dir string, m signing.Manifest) (Binary, error) {
	final := BinaryPath(dir, m.Plugin, m.Version)
	vdir := filepath.Dir(final)
	if err := mkdir0755(vdir); err != nil {
		return Binary{}, fmt.Errorf("installing %s %s: %w", m.Plugin, m.Version, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return Binary{}, fmt.Errorf("installing %s %s: %w", m.Plugin, m.Version, err)
	}
	for _, d := range []string{vdir, filepath.Dir(vdir)} {
		if err := atomicfile.SyncDir(d); err != nil {
			return Binary{}, fmt.Errorf("installing %s %s: fsync %s: %w", m.Plugin, m.Version, d, err)
		}
	}
	return Binary{Version: m.Version, Path: final, SHA256: m.SHA256}, nil
}

// mkdir0755 creates dir and its parents as 0755 whatever the umask, and
// refuses a directory that others may write to (anyone who can write
// there could swap a binary between verification and start).
func mkdir0755(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	// A directory someone else created (and could change) is not ours to
	// install into; on a real host everything here belongs to root.
	if st, err := os.Stat(dir); err != nil {
		return err
	} else if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("%s belongs to uid %d, not to the host's uid %d; refusing to install into it", dir, sys.Uid, os.Geteuid())
	}
	for d := filepath.Dir(dir); d != "/" && d != "."; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o022 != 0 && st.Mode()&os.ModeSticky == 0 {
			return fmt.Errorf("%s is writable by group or others (mode %v); refusing to install below it", d, st.Mode().Perm())
		}
	}
	return nil
}

// installed returns the binary of a release already on disk with the
// signed sha256 (an instant rollback to a kept version), or false.
func installed(dir string, m signing.Manifest) (Binary, bool) {
	path := BinaryPath(dir, m.Plugin, m.Version)
	f, err := os.Open(path)
	if err != nil {
		return Binary{}, false
	}
	defer f.Close()
	h := sha256.New()
	if n, err := io.Copy(h, io.LimitReader(f, m.Length+1)); err != nil || n != m.Length {
		return Binary{}, false
	}
	if hex.EncodeToString(h.Sum(nil)) != m.SHA256 {
		return Binary{}, false
	}
	return Binary{Version: m.Version, Path: path, SHA256: m.SHA256}, true
}

// collect removes the plugin's installed versions other than keep, and
// leftover temporary downloads.
func collect(dir, plugin string, keep []string) error {
	pdir := filepath.Join(dir, plugin)
	ents, err := os.ReadDir(pdir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	kept := map[string]bool{}
	for _, v := range keep {
		kept[v] = true
	}
	var errs []string
	for _, e := range ents {
		name := e.Name()
		_, verr := semver.NewVersion(name)
		switch {
		case strings.HasPrefix(name, ".download-"):
		case verr == nil && e.IsDir() && !kept[name]:
		default:
			continue
		}
		if err := os.RemoveAll(filepath.Join(pdir, name)); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("collecting old versions of %s: %s", plugin, strings.Join(errs, "; "))
	}
	return nil
}
