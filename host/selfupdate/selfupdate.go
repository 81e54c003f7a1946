package selfupdate

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-semver/semver"
	minio "github.com/minio/selfupdate"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/signing"
)

// Defaults.
const (
	// DefaultWindow is how long a new binary has to pass its health gate.
	DefaultWindow = 2 * time.Minute
	// DefaultSettle is how long it must stay healthy to pass.
	DefaultSettle = 10 * time.Second
	// DefaultCheckEvery is how often the gate checks health.
	DefaultCheckEvery = 500 * time.Millisecond
)

// Errors.
var (
	// ErrRolledBack: the trial failed and the previous binary is back at
	// the target path; the caller must restart into it.
	ErrRolledBack = errors.New("selfupdate: new vigil-host rolled back, restart into the previous binary")
	// ErrNotRelease: the running binary has no semver version, so a
	// downgrade cannot be told from an upgrade.
	ErrNotRelease = errors.New("selfupdate: running vigil-host has no release (semver) version, self-update refused")
	// ErrFailedBefore: the version was rolled back on this host before.
	ErrFailedBefore = errors.New("selfupdate: version rolled back on this host before, not tried again")
	// ErrBinarySignature: a trusted key's minisign signature of the binary
	// does not verify.
	ErrBinarySignature = errors.New("selfupdate: minisign signature of the binary does not verify, the bytes are not the ones that were signed")
)

// Config is what an Updater needs.
type Config struct {
	// Target is the installed vigil-host binary to replace (always
	// explicit, never guessed from /proc/self/exe while it may be a
	// deleted or kept copy). Required, absolute.
	Target string
	// Running is the version of the running binary.
	Running string
	// OS and Arch default to the running platform.
	OS, Arch string
	// Trust verifies release manifests and the binaries' minisign
	// signatures; ReleaseKeys, when set, is asked instead at each install
	// (a keyring checked against root keys at the current time).
	Trust       signing.Trust
	ReleaseKeys func(now time.Time) (signing.Trust, error)
	// Window, Settle and CheckEvery tune the health gate (zero: defaults).
	Window, Settle, CheckEvery time.Duration
	Clock                      sdk.Clock
	Log                        *slog.Logger
}

// Updater installs vigil-host releases over Config.Target.
type Updater struct {
	cfg Config
	log *slog.Logger
	mu  sync.Mutex // serialises state file updates within the process
}

// New validates cfg.
func New(cfg Config) (*Updater, error) {
	var errs []error
	if cfg.Target == "" || !filepath.IsAbs(cfg.Target) {
		errs = append(errs, fmt.Errorf("selfupdate: target must be an absolute path (got %q)", cfg.Target))
	}
	if cfg.Window < 0 || cfg.Settle < 0 || cfg.CheckEvery < 0 {
		errs = append(errs, errors.New("selfupdate: window, settle and check interval must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.OS == "" {
		cfg.OS = runtime.GOOS
	}
	if cfg.Arch == "" {
		cfg.Arch = runtime.GOARCH
	}
	if cfg.Window == 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.Settle == 0 {
		cfg.Settle = DefaultSettle
	}
	if cfg.Settle > cfg.Window {
		cfg.Settle = cfg.Window
	}
	if cfg.CheckEvery == 0 {
		cfg.CheckEvery = DefaultCheckEvery
	}
	if cfg.Clock == nil {
		cfg.Clock = sdk.SystemClock()
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	cfg.Running = strings.TrimPrefix(cfg.Running, "v")
	return &Updater{cfg: cfg, log: cfg.Log.With("component", "selfupdate")}, nil
}

// Paths of the files kept next to the target.
func (u *Updater) sibling(suffix string) string {
	return filepath.Join(filepath.Dir(u.cfg.Target), "."+filepath.Base(u.cfg.Target)+suffix)
}

// StatePath is the state file (marker, last result, failed versions).
func (u *Updater) StatePath() string { return u.sibling(".update.json") }

// PreviousPath is the kept copy of the binary that installed the running
// one.
func (u *Updater) PreviousPath() string { return u.sibling(".prev") }

// newPath is where minio/selfupdate stages the new binary.
func (u *Updater) newPath() string { return u.sibling(".new") }

// oldPath is where minio/selfupdate's CommitBinary moves the target.
func (u *Updater) oldPath() string { return u.sibling(".old") }

// Dir is the target's directory, where a download must land so that the
// swap is a rename within one file system.
func (u *Updater) Dir() string { return filepath.Dir(u.cfg.Target) }

// Target is the binary the updater replaces.
func (u *Updater) Target() string { return u.cfg.Target }

// Running is the running version.
func (u *Updater) Running() string { return u.cfg.Running }

// State reads the state file.
func (u *Updater) State() (State, error) { return readState(u.StatePath()) }

// Release is a vigil-host release as fetched from an untrusted mirror.
type Release struct {
	Manifest signing.SignedManifest
	// Binary is the downloaded file.
	Binary string
	// Minisig maps a key id to the path of that key's minisign signature
	// of the binary (binary.<KEYID>.minisig in a bundle).
	Minisig map[string]string
}

// BundleRelease reads a release from a bundle directory.
func BundleRelease(dir string) (Release, error) {
	s, err := signing.ReadBundleManifest(dir)
	if err != nil {
		return Release{}, err
	}
	r := Release{Manifest: s, Binary: filepath.Join(dir, signing.BundleBinary), Minisig: map[string]string{}}
	for _, sig := range s.Signatures {
		p := signing.BinarySignaturePath(dir, sig.KeyID)
		if _, err := os.Stat(p); err == nil {
			r.Minisig[sig.KeyID] = p
		}
	}
	return r, nil
}

// Check decides whether version should be installed, without touching
// anything: "" when it should, else why not (already running, rolled back
// before).
func (u *Updater) Check(version string) (skip string, err error) {
	if version == "" || version == u.cfg.Running {
		return "already running", nil
	}
	st, err := u.State()
	if err != nil {
		return "", err
	}
	if why, ok := st.Failed[version]; ok {
		return "", fmt.Errorf("%w: %s: %s", ErrFailedBefore, version, why)
	}
	return "", nil
}

// trust returns the release keys in force now.
func (u *Updater) trust() (signing.Trust, error) {
	if u.cfg.ReleaseKeys != nil {
		return u.cfg.ReleaseKeys(u.cfg.Clock.Now())
	}
	return u.cfg.Trust, nil
}

// Verify runs every check on r without installing it.
func (u *Updater) Verify(r Release) (signing.Verified, error) {
	if _, err := semver.NewVersion(u.cfg.Running); err != nil {
		return signing.Verified{}, fmt.Errorf("%w: running %q", ErrNotRelease, u.cfg.Running)
	}
	trust, err := u.trust()
	if err != nil {
		return signing.Verified{}, err
	}
	v, err := signing.VerifyManifest(r.Manifest, trust, signing.Expect{
		Plugin: api.HostReleaseName, OS: u.cfg.OS, Arch: u.cfg.Arch,
		Running: u.cfg.Running, HostVersion: u.cfg.Running, Now: u.cfg.Clock.Now(),
	})
	if err != nil {
		return v, err
	}
	f, err := os.Open(r.Binary)
	if err != nil {
		return v, fmt.Errorf("selfupdate: opening downloaded binary: %w", err)
	}
	defer f.Close()
	if err := signing.VerifyBinary(v.Manifest, f); err != nil {
		return v, err
	}
	return v, nil
}

// verifiers loads minio/selfupdate's minisign verifier for each trusted
// key that signed the binary; keys the host does not trust are ignored.
func (u *Updater) verifiers(r Release) ([]*minio.Verifier, error) {
	trust, err := u.trust()
	if err != nil {
		return nil, err
	}
	trusted := map[string]string{}
	for _, k := range trust.Keys() {
		pub, err := signing.ParsePublicKey([]byte(k))
		if err != nil {
			return nil, err
		}
		trusted[signing.KeyID(pub.ID())] = k
	}
	ids := make([]string, 0, len(r.Minisig))
	for id := range r.Minisig {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []*minio.Verifier
	for _, id := range ids {
		key, ok := trusted[id]
		if !ok {
			continue
		}
		v := minio.NewVerifier()
		if err := v.LoadFromFile(r.Minisig[id], key); err != nil {
			return nil, fmt.Errorf("%w: key %s: %v", ErrBinarySignature, id, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// Install verifies r and makes it the binary at Target, keeping the running
// binary as PreviousPath and writing the trial marker. The caller then
// restarts into Target. On any error the target is untouched.
func (u *Updater) Install(r Release) (Trial, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	v, err := u.Verify(r)
	if err != nil {
		return Trial{}, err
	}
	m := v.Manifest
	st, err := u.State()
	if err != nil {
		return Trial{}, err
	}
	if why, ok := st.Failed[m.Version]; ok {
		return Trial{}, fmt.Errorf("%w: %s: %s", ErrFailedBefore, m.Version, why)
	}
	vers, err := u.verifiers(r)
	if err != nil {
		return Trial{}, err
	}
	sum, err := hex.DecodeString(m.SHA256)
	if err != nil {
		return Trial{}, fmt.Errorf("selfupdate: manifest sha256: %w", err)
	}
	body, err := os.ReadFile(r.Binary)
	if err != nil {
		return Trial{}, fmt.Errorf("selfupdate: reading downloaded binary: %w", err)
	}
	for _, ver := range vers[min(1, len(vers)):] {
		if err := ver.Verify(body); err != nil {
			return Trial{}, fmt.Errorf("%w: %v", ErrBinarySignature, err)
		}
	}
	opts := minio.Options{TargetPath: u.cfg.Target, TargetMode: 0o755, Checksum: sum}
	if len(vers) > 0 {
		opts.Verifier = vers[0]
	} else {
		u.log.Warn("release carries no minisign signature of the binary by a trusted key; relying on the signed manifest's sha256",
			"version", m.Version)
	}
	newPath := u.newPath()
	defer os.Remove(newPath) // gone after the rename; a leftover on failure
	if err := minio.PrepareAndCheckBinary(bytes.NewReader(body), opts); err != nil {
		if strings.Contains(err.Error(), "signature") {
			err = fmt.Errorf("%w: %v", ErrBinarySignature, err)
		}
		return Trial{}, fmt.Errorf("selfupdate: staging %s %s: %w", api.HostReleaseName, m.Version, err)
	}
	if err := syncFile(newPath, 0o755); err != nil {
		return Trial{}, err
	}
	if err := u.keepPrevious(); err != nil {
		return Trial{}, err
	}
	now := u.cfg.Clock.Now().UTC()
	t := Trial{
		Version: m.Version, SHA256: m.SHA256, Previous: u.cfg.Running, PreviousPath: u.PreviousPath(),
		InstalledAt: now, Deadline: now.Add(u.cfg.Window),
	}
	st.Trial = &t
	st.Last = &api.UpdateStatus{Target: m.Version, Running: u.cfg.Running, State: api.UpdateHealthCheck, At: now}
	if err := writeState(u.StatePath(), st); err != nil {
		return Trial{}, err
	}
	// The swap: one rename over the target, atomic across a crash.
	if err := os.Rename(newPath, u.cfg.Target); err != nil {
		st.Trial = nil
		st.Last = &api.UpdateStatus{Target: m.Version, Running: u.cfg.Running, State: api.UpdateFailed, Error: err.Error(), At: now}
		_ = writeState(u.StatePath(), st)
		return Trial{}, fmt.Errorf("selfupdate: replacing %s: %w", u.cfg.Target, err)
	}
	if err := syncDir(filepath.Dir(u.cfg.Target)); err != nil {
		return t, err
	}
	u.log.Info("new vigil-host installed, restarting into it for its trial",
		"version", m.Version, "previous", u.cfg.Running, "kept", t.PreviousPath, "signers", v.Signers)
	return t, nil
}

// keepPrevious makes PreviousPath a complete copy of the current target:
// a hard link through a temporary name and a rename, so PreviousPath is
// never a partial file; a copy when the file system has no hard links.
func (u *Updater) keepPrevious() error {
	prev := u.PreviousPath()
	tmp := prev + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Link(u.cfg.Target, tmp); err != nil {
		if err := copyFile(u.cfg.Target, tmp); err != nil {
			return fmt.Errorf("selfupdate: keeping the running binary: %w", err)
		}
	}
	if err := os.Rename(tmp, prev); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("selfupdate: keeping the running binary: %w", err)
	}
	return syncDir(filepath.Dir(prev))
}

// restorePrevious puts the kept binary back at the target with one rename
// (from a fresh link, so the kept copy stays for another restore).
func (u *Updater) restorePrevious(prev string) error {
	tmp := u.sibling(".restore")
	_ = os.Remove(tmp)
	if err := os.Link(prev, tmp); err != nil {
		if err := copyFile(prev, tmp); err != nil {
			return fmt.Errorf("selfupdate: restoring %s: %w", prev, err)
		}
	}
	if err := os.Rename(tmp, u.cfg.Target); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("selfupdate: restoring %s: %w", prev, err)
	}
	return syncDir(filepath.Dir(u.cfg.Target))
}

func syncFile(path string, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("selfupdate: syncing %s: %w", path, err)
	}
	err = errors.Join(f.Chmod(mode), f.Sync(), f.Close())
	if err != nil {
		return fmt.Errorf("selfupdate: syncing %s: %w", path, err)
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err = errors.Join(err, out.Sync(), out.Close()); err != nil {
		_ = os.Remove(dst)
	}
	return err
}
