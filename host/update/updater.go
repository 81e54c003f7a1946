package update

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/coreos/go-semver/semver"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/supervisor"
	"github.com/vigil-hids/vigil/signing"
)

// Plugins is the host's plugin supervisor as the updater drives it.
type Plugins interface {
	// Refresh makes the supervisor run the binary Updater.Binary names for
	// plugin now (restarting it if that changed).
	Refresh(plugin string)
	// Observe reports the plugin's starts and crashes (supervisor.Manager.Observe).
	Observe(plugin string, fn func(supervisor.Lifecycle)) (cancel func())
	// State is the plugin's supervision state and the version it reports.
	State(plugin string) (state supervisor.State, version string)
}

// Config builds an Updater.
type Config struct {
	Host string
	// HostVersion is checked against min_host_version; a version that is
	// not semver (a development build) skips that check.
	HostVersion string
	// OS and Arch default to the running binary's.
	OS, Arch string
	// Trust is what release signatures are checked against; with root
	// keys it takes a newer published keyring (Keyring) before each
	// install.
	Trust  *TrustStore
	Source Source
	// Dir holds the installed releases; StateDir the installed.json record.
	Dir      string
	StateDir string
	// SpreadWindow, HealthWindow, StartTimeout and Keep: see config.Update.
	SpreadWindow time.Duration
	HealthWindow time.Duration
	StartTimeout time.Duration
	Keep         int
	// RetryDelay is the first pause before a failed download or manifest
	// read is tried again (doubling up to 32 times it); default 1m.
	RetryDelay time.Duration
	// Manifests reads the signed manifest of a release (from etcd).
	Manifests func(ctx context.Context, plugin, version string) ([]byte, error)
	// Keyring reads the keyring published for the fleet (from etcd; nil,
	// nil when none is). Optional; read before each install and every
	// KeyringRefresh (default 10m), each host at its own moment.
	Keyring        func(ctx context.Context) ([]byte, error)
	KeyringRefresh time.Duration
	Plugins        Plugins
	Log            *slog.Logger
	// Now is the clock for expiry; default time.Now.
	Now func() time.Time
}

// Updater installs the plugin versions the desired state asks for, one
// worker per plugin, and reports each one's progress.
type Updater struct {
	cfg Config
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	st      state
	run     map[string]*Binary // what each plugin should run now (candidate during the gate)
	status  map[string]*api.UpdateStatus
	targets map[string]string
	kicks   map[string]chan struct{}
	closed  bool
	// rollbacks is how long each plugin's last automatic rollback took.
	rollbacks map[string]time.Duration
	// repairs is the version whose damaged binary was removed, to fetch
	// again even when no version is desired.
	repairs map[string]string
}

// New loads the installed releases and returns an Updater with no worker
// running yet (Want starts them).
func New(cfg Config) (*Updater, error) {
	if cfg.Manifests == nil || cfg.Plugins == nil || cfg.Trust == nil {
		return nil, errors.New("update: Manifests, Plugins and Trust are required")
	}
	if cfg.Dir == "" || cfg.StateDir == "" {
		return nil, errors.New("update: Dir and StateDir are required")
	}
	if cfg.OS == "" {
		cfg.OS = runtime.GOOS
	}
	if cfg.Arch == "" {
		cfg.Arch = runtime.GOARCH
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HealthWindow <= 0 {
		cfg.HealthWindow = 30 * time.Second
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = time.Minute
	}
	if cfg.Keep <= 0 {
		cfg.Keep = 1
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = time.Minute
	}
	if cfg.KeyringRefresh <= 0 {
		cfg.KeyringRefresh = 10 * time.Minute
	}
	if err := mkdir0755(cfg.Dir); err != nil {
		return nil, fmt.Errorf("update.dir: %w", err)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("update: state dir: %w", err)
	}
	st, err := loadState(cfg.StateDir)
	if err != nil {
		// A torn or foreign record must not keep the host from starting:
		// the plugins run the config file's binaries, and the fleet's
		// desired versions install again.
		cfg.Log.Error("ignoring the installed-releases record; plugins run the config file's binaries", "err", err)
	}
	u := &Updater{
		cfg: cfg, log: cfg.Log.With("component", "update"), st: st,
		run: map[string]*Binary{}, status: map[string]*api.UpdateStatus{},
		targets: map[string]string{}, kicks: map[string]chan struct{}{},
	}
	for name, r := range st.Plugins {
		if r.Current != nil {
			b := *r.Current
			u.run[name] = &b
			u.status[name] = &api.UpdateStatus{Target: b.Version, Running: b.Version, State: api.UpdateInstalled}
		}
		if r.Failed != nil {
			u.status[name] = &api.UpdateStatus{Target: r.Failed.Version, Running: u.runningLocked(name), State: r.Failed.State, Error: r.Failed.Error}
		}
	}
	u.ctx, u.cancel = context.WithCancel(context.Background())
	// Whoever takes a new keyring (this updater's reads, or self-update's
	// on the shared store), the refused releases are tried again.
	cfg.Trust.OnChange(u.keyringChanged)
	if cfg.Keyring != nil && cfg.Trust.Trust().Roots != nil {
		u.wg.Add(1)
		go u.keyringLoop()
	}
	return u, nil
}

// keyringLoop reads the published keyring every KeyringRefresh, starting
// at this host's moment of the first interval.
func (u *Updater) keyringLoop() {
	defer u.wg.Done()
	d := Spread(u.cfg.Host, "keyring", "", u.cfg.KeyringRefresh)
	for {
		t := time.NewTimer(d)
		select {
		case <-u.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(u.ctx, time.Minute)
		u.refreshKeyring(ctx)
		cancel()
		d = u.cfg.KeyringRefresh
	}
}

// refreshKeyring offers the published keyring to the trust store; a
// keyring taken calls keyringChanged.
func (u *Updater) refreshKeyring(ctx context.Context) {
	u.mu.Lock()
	minSerial := u.st.KeyringSerial
	u.mu.Unlock()
	u.cfg.Trust.Refresh(ctx, u.cfg.Keyring, u.cfg.Now(), minSerial)
}

// keyringChanged runs after the trust store took a new keyring: it records
// the serial, and the releases refused before are tried again (a rotation
// lists the keys that may have signed them).
func (u *Updater) keyringChanged() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return
	}
	u.st.KeyringSerial = max(u.st.KeyringSerial, u.cfg.Trust.Trust().KeyringSerial())
	for name, r := range u.st.Plugins {
		if r.Failed == nil || r.Failed.State != api.UpdateRefused {
			continue
		}
		u.log.Info("release refused before is tried again with the new keyring", "plugin", name, "version", r.Failed.Version)
		r.Failed = nil
		if kick := u.kicks[name]; kick != nil {
			select {
			case kick <- struct{}{}:
			default:
			}
		}
	}
	if err := saveState(u.cfg.StateDir, u.st); err != nil {
		u.log.Error("saving installed releases", "err", err)
	}
}

// Binary is what plugin should run: the installed release, the candidate
// during its health gate, or nil for the config file's binary.
func (u *Updater) Binary(plugin string) *Binary {
	u.mu.Lock()
	defer u.mu.Unlock()
	if b := u.run[plugin]; b != nil {
		c := *b
		return &c
	}
	return nil
}

// Status is plugin's latest update status, nil when no release was ever
// asked for. The pointer is the same until the status changes (the
// control loop compares registrations with ==, so an unchanged status must
// not look new); callers must not modify it.
func (u *Updater) Status(plugin string) *api.UpdateStatus {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.status[plugin]
}

// Want sets the version plugin should run ("" keeps what it runs). It
// returns at once; the plugin's worker installs it.
func (u *Updater) Want(plugin, version string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return
	}
	u.targets[plugin] = version
	if r := u.st.Plugins[plugin]; r != nil && r.Failed != nil && version != "" && r.Failed.Version != version {
		// Another version is asked for: the failed one may be asked
		// for again later and is then tried again.
		r.Failed = nil
	}
	kick, ok := u.kicks[plugin]
	if !ok {
		kick = make(chan struct{}, 1)
		u.kicks[plugin] = kick
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			u.worker(plugin, kick)
		}()
	}
	select {
	case kick <- struct{}{}:
	default:
	}
}

// Close stops the workers (an install in its health gate finishes or rolls
// back first) and waits for them. Idempotent.
func (u *Updater) Close() {
	u.mu.Lock()
	u.closed = true
	u.mu.Unlock()
	u.cancel()
	u.wg.Wait()
}

func (u *Updater) target(plugin string) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.targets[plugin]
}

func (u *Updater) runningLocked(plugin string) string {
	if b := u.run[plugin]; b != nil {
		return b.Version
	}
	return ""
}

// worker installs plugin's target whenever it changes; a transient failure
// is retried with backoff while the target stays.
func (u *Updater) worker(plugin string, kick chan struct{}) {
	delay := u.cfg.RetryDelay
	var retry <-chan time.Time
	var failed string // the target whose transient failure waits for retry
	damage := make(chan string, 1)
	defer u.observeDamage(plugin, damage)()
	u.mu.Lock()
	if r := u.st.Plugins[plugin]; r != nil && r.Current != nil {
		damage <- r.Current.Path // check it once: a start may have failed before we listened
	}
	u.mu.Unlock()
	for {
		select {
		case <-u.ctx.Done():
			return
		case path := <-damage:
			if !u.repair(plugin, path) {
				continue
			}
		case <-kick:
			if retry != nil && u.target(plugin) == failed {
				// The same target asked again (any desired-state change
				// re-applies it): keep the backoff, do not retry at once.
				continue
			}
		case <-retry:
		}
		retry, failed = nil, ""
		target := u.target(plugin)
		u.mu.Lock()
		if target == "" {
			target = u.repairs[plugin]
		}
		u.mu.Unlock()
		if !u.needed(plugin, target) {
			delay = u.cfg.RetryDelay
			continue
		}
		transient := u.install(u.ctx, plugin, target, kick)
		if u.ctx.Err() != nil {
			return
		}
		if transient {
			retry, failed = time.After(delay), target
			delay = min(2*delay, 32*u.cfg.RetryDelay)
		} else {
			delay = u.cfg.RetryDelay
		}
	}
}

// needed says whether target asks for an install: not empty, not what
// runs, not a release that was refused or failed already.
func (u *Updater) needed(plugin, target string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if target == "" || target == u.runningLocked(plugin) {
		return false
	}
	if r := u.st.Plugins[plugin]; r != nil && r.Failed != nil && r.Failed.Version == target {
		return false
	}
	return true
}

func (u *Updater) report(plugin, target, state string, err error) {
	now := u.cfg.Now().UTC()
	u.mu.Lock()
	s := &api.UpdateStatus{Target: target, Running: u.runningLocked(plugin), State: state, At: now}
	if err != nil {
		s.Error = err.Error()
	}
	u.status[plugin] = s
	u.mu.Unlock()
	switch state {
	case api.UpdateRefused, api.UpdateFailed, api.UpdateRolledBack:
		u.log.Error("plugin update "+state, "plugin", plugin, "target", target, "running", s.Running, "error", s.Error)
	default:
		u.log.Info("plugin update "+state, "plugin", plugin, "target", target, "running", s.Running)
	}
}

// fail records a refusal or a failed gate so the same version is not
// tried again until the target changes.
func (u *Updater) fail(plugin, target, state string, err error) {
	u.report(plugin, target, state, err)
	u.mu.Lock()
	defer u.mu.Unlock()
	r := u.record(plugin)
	r.Failed = &failure{Version: target, State: state, Error: err.Error()}
	if serr := saveState(u.cfg.StateDir, u.st); serr != nil {
		u.log.Error("saving installed releases", "err", serr)
	}
}

// retryIfKeyringChanged tries target again when the keyring in use is no
// longer serial, the one it was just refused with: the new keyring was
// taken while the refusal was on its way, after keyringChanged looked for
// refused releases.
func (u *Updater) retryIfKeyringChanged(plugin, target string, serial uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	r := u.st.Plugins[plugin]
	if u.closed || u.cfg.Trust.Trust().KeyringSerial() == serial || r == nil || r.Failed == nil ||
		r.Failed.Version != target || r.Failed.State != api.UpdateRefused {
		return
	}
	u.log.Info("release refused before is tried again with the new keyring", "plugin", plugin, "version", target)
	r.Failed = nil
	if err := saveState(u.cfg.StateDir, u.st); err != nil {
		u.log.Error("saving installed releases", "err", err)
	}
	if kick := u.kicks[plugin]; kick != nil {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
}

func (u *Updater) record(plugin string) *record {
	r := u.st.Plugins[plugin]
	if r == nil {
		r = &record{}
		u.st.Plugins[plugin] = r
	}
	return r
}

// expect fills every field the manifest is checked against.
func (u *Updater) expect(plugin string) signing.Expect {
	u.mu.Lock()
	running := u.runningLocked(plugin)
	serial := u.st.KeyringSerial
	u.mu.Unlock()
	if running == "" {
		// The config file's binary: the version it reports, if semver.
		if _, v := u.cfg.Plugins.State(plugin); v != "" {
			if _, err := semver.NewVersion(v); err == nil {
				running = v
			}
		}
	}
	host := u.cfg.HostVersion
	if _, err := semver.NewVersion(host); err != nil {
		host = "" // a development build: min_host_version is not checked
	}
	return signing.Expect{Plugin: plugin, OS: u.cfg.OS, Arch: u.cfg.Arch, Running: running,
		HostVersion: host, MinKeyringSerial: serial, Now: u.cfg.Now()}
}

// install runs the steps for one target; it reports whether a failure is
// transient (worth retrying while the target stays).
func (u *Updater) install(ctx context.Context, plugin, target string, kick chan struct{}) (transient bool) {
	u.report(plugin, target, api.UpdateVerifying, nil)
	raw, err := u.cfg.Manifests(ctx, plugin, target)
	if err != nil {
		u.report(plugin, target, api.UpdateFailed, fmt.Errorf("reading manifest of %s %s: %w", plugin, target, err))
		return true
	}
	u.refreshKeyring(ctx)
	want := u.expect(plugin)
	trust := u.cfg.Trust.Trust()
	v, err := VerifyManifest(raw, trust, want)
	if err != nil {
		u.fail(plugin, target, api.UpdateRefused, err)
		u.retryIfKeyringChanged(plugin, target, trust.KeyringSerial())
		return false
	}
	m := v.Manifest
	if m.Version != target {
		u.fail(plugin, target, api.UpdateRefused, fmt.Errorf("%w: the key names %s %s, the manifest %s %s", ErrKeyMismatch, plugin, target, m.Plugin, m.Version))
		return false
	}
	u.mu.Lock()
	r := u.record(plugin)
	highest := r.Highest
	if s := u.cfg.Trust.Trust().KeyringSerial(); s > u.st.KeyringSerial {
		u.st.KeyringSerial = s
	}
	u.mu.Unlock()
	if highest != "" && semver.New(m.Version).LessThan(*semver.New(highest)) && !m.Rollback {
		u.fail(plugin, target, api.UpdateRefused, fmt.Errorf("release %s %s refused: %w: version %s was installed before", plugin, m.Version, ErrReplay, highest))
		return false
	}

	u.mu.Lock()
	cur := u.run[plugin]
	u.mu.Unlock()
	if cur != nil && cur.SHA256 == m.SHA256 && fileSHA256(cur.Path) == m.SHA256 {
		// The same binary under another version (a rollback release of
		// the version this host never left): nothing to install.
		u.adopt(plugin, target, m.Version)
		return false
	}
	b, ok := installed(u.cfg.Dir, m)
	if !ok {
		b, ok = u.keptCopy(plugin, m)
	}
	if !ok {
		if d := Spread(u.cfg.Host, plugin, m.Version, u.cfg.SpreadWindow); d > 0 {
			u.log.Info("plugin update waits for its moment of the spread window", "plugin", plugin, "target", target, "delay", d)
			timer := time.NewTimer(d)
		wait:
			for {
				select {
				case <-ctx.Done():
					timer.Stop()
					return false
				case <-kick:
					if u.target(plugin) != target {
						// A new target: start again with it.
						timer.Stop()
						kick <- struct{}{}
						return false
					}
					// The same target asked again: keep this host's moment.
				case <-timer.C:
					break wait
				}
			}
		}
		u.report(plugin, target, api.UpdateDownloading, nil)
		pdir := filepath.Join(u.cfg.Dir, plugin)
		if err := mkdir0755(pdir); err != nil {
			u.report(plugin, target, api.UpdateFailed, fmt.Errorf("installing %s %s: %w", plugin, target, err))
			return true
		}
		tmp, err := Download(ctx, u.cfg.Source, m, pdir)
		if err != nil {
			u.report(plugin, target, api.UpdateFailed, err)
			return true
		}
		if b, err = Place(tmp, u.cfg.Dir, m); err != nil {
			os.Remove(tmp)
			u.report(plugin, target, api.UpdateFailed, err)
			return true
		}
	}
	u.gate(ctx, plugin, target, b)
	return false
}
