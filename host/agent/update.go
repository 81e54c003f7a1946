package agent

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/supervisor"
	"github.com/vigil-hids/vigil/host/update"
)

// pluginUpdates installs the plugin versions the desired state asks for
// (package update): manifests from etcd through the control loop's client,
// binaries from the server section's artifact store.
type pluginUpdates struct {
	u *update.Updater
	// trust is the release trust, shared with self-update when the
	// host has it (SelfUpdate.Trust).
	trust *update.TrustStore
	cli   atomic.Pointer[clientv3.Client]
	ks    api.Keyspace
	// setMu makes computing the specs and handing them to the supervisor
	// one step, so an Apply cannot hand over specs computed before a
	// binary switch after the switch.
	setMu sync.Mutex
}

// setSpecs hands the current specs to the supervisor.
func (a *Agent) setSpecs() error {
	if a.upd != nil {
		a.upd.setMu.Lock()
		defer a.upd.setMu.Unlock()
	}
	return a.sup.Set(a.specs())
}

// startUpdates builds the updater from the update section (nil without
// one). It loads the installed releases, so specs() runs them from the
// first start.
func (a *Agent) startUpdates() error {
	us := a.cfg.UpdateSettings()
	if us == nil {
		return nil
	}
	var trust *update.TrustStore
	if su := a.opts.SelfUpdate; su != nil && su.Trust != nil {
		trust = su.Trust
	} else {
		t, err := update.LoadTrust(us.TrustFile, us.RootsFile, us.KeyringFile)
		if err != nil {
			return err
		}
		trust = update.NewTrustStore(t, a.cfg.StateDir, a.opts.Log)
	}
	link := a.cfg.ServerLink()
	client, err := link.HTTPClient(0)
	if err != nil {
		return err
	}
	pu := &pluginUpdates{ks: api.NewKeyspace(a.cfg.ControlConfig(a.opts.Version).Prefix), trust: trust}
	if a.hu != nil {
		trust.OnChange(a.hostKeyringChanged)
	}
	pu.u, err = update.New(update.Config{
		Host: a.cfg.HostName, HostVersion: a.opts.Version, OS: runtime.GOOS, Arch: runtime.GOARCH,
		Trust: trust,
		Source: update.Source{Client: client, BaseURL: link.URL, RequestTimeout: us.RequestTimeout,
			StallTimeout: us.StallTimeout, Attempts: us.Attempts},
		Dir: us.Dir, StateDir: a.cfg.StateDir,
		SpreadWindow: us.SpreadWindow, HealthWindow: us.HealthWindow, StartTimeout: us.StartTimeout, Keep: us.Keep,
		Manifests: pu.manifest,
		Keyring:   pu.keyring, KeyringRefresh: us.KeyringRefresh,
		Plugins: agentPlugins{a},
		Log:     a.opts.Log,
	})
	if err != nil {
		return err
	}
	a.upd = pu
	return nil
}

// connectUpdates hands the control loop's etcd client to the updater.
func (a *Agent) connectUpdates() {
	if a.upd != nil && a.ctl != nil {
		a.upd.cli.Store(a.ctl.Client())
	}
}

func (a *Agent) closeUpdates() {
	if a.upd != nil {
		a.upd.u.Close()
	}
}

// manifest reads /hids/releases/{plugin}/{version}/{os}/{arch} from etcd,
// the manifest of this host's platform (the updater's Config.OS/Arch).
func (pu *pluginUpdates) manifest(ctx context.Context, plugin, version string) ([]byte, error) {
	cli := pu.cli.Load()
	if cli == nil {
		return nil, errors.New("not connected to etcd yet")
	}
	return readRelease(ctx, cli, pu.ks, plugin, version, runtime.GOOS, runtime.GOARCH)
}

// readRelease reads the signed manifest of one platform of a release. When
// none is published the error names the key and the platforms that are
// (one more keys-only read), so an operator sees which one is missing.
func readRelease(ctx context.Context, cli *clientv3.Client, ks api.Keyspace, plugin, version, goos, arch string) ([]byte, error) {
	key := ks.Release(plugin, version, goos, arch)
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", key, err)
	}
	if len(resp.Kvs) > 0 {
		return resp.Kvs[0].Value, nil
	}
	published := "not published for any platform"
	prefix := ks.ReleaseVersion(plugin, version)
	others, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		published = fmt.Sprintf("reading %s for the published platforms: %v", prefix, err)
	} else {
		var ps []string
		for _, kv := range others.Kvs {
			if p, v, o, a, ok := ks.ParseRelease(string(kv.Key)); ok && p == plugin && v == version {
				ps = append(ps, api.Platform(o, a))
			}
		}
		if len(ps) > 0 {
			published = "published for: " + strings.Join(ps, ", ")
		}
	}
	return nil, fmt.Errorf("no release of %s %s for %s at %s (%s)", plugin, version, api.Platform(goos, arch), key, published)
}

// keyring reads the keyring published for the fleet (/hids/keyring/current);
// nil, nil when none is.
func (pu *pluginUpdates) keyring(ctx context.Context) ([]byte, error) {
	cli := pu.cli.Load()
	if cli == nil {
		return nil, errors.New("not connected to etcd yet")
	}
	return readKeyring(ctx, cli, pu.ks)
}

// readKeyring reads the published keyring; nil, nil when none is. The read
// is linearizable: a serializable read from a member a little behind could
// give a keyring older than the one the host took from another member, and
// the host would report that as a refused rollback. Every host reads it
// once per keyring_refresh (at 20,000 hosts and 10 min, 33 reads/s per
// cell, against the 3N/TTL lease renewals).
func readKeyring(ctx context.Context, cli *clientv3.Client, ks api.Keyspace) ([]byte, error) {
	resp, err := cli.Get(ctx, ks.Keyring())
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", ks.Keyring(), err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0].Value, nil
}

// Keyring is the release keyring's state for the registration
// (control.KeyringReporter); nil without an update section or with pinned
// release keys.
func (a *Agent) Keyring() *api.KeyringStatus {
	if a.upd == nil {
		return nil
	}
	return a.upd.trust.Status()
}

// wantVersions passes each plugin's effective desired version (after its
// rollout percentage) to the updater; without an update section a desired
// version is refused by name.
func (a *Agent) wantVersions(ds api.DesiredState) []error {
	var errs []error
	for _, p := range a.cfg.Plugins {
		st := ds.Plugins[p.Name]
		target := api.TargetVersion(a.cfg.HostName, p.Name, st.Version, st.Rollout)
		if a.upd == nil {
			if target != "" {
				errs = append(errs, fmt.Errorf("plugin %q: version %s asked for, but this host has no update section (no trusted release keys)", p.Name, target))
			}
			continue
		}
		a.upd.u.Want(p.Name, target)
	}
	return errs
}

// installedBinary lays an installed release over the config file's binary.
func (a *Agent) installedBinary(s *supervisor.Spec) {
	if a.upd == nil {
		return
	}
	if b := a.upd.u.Binary(s.Name); b != nil {
		s.Path, s.SHA256 = b.Path, b.SHA256
	}
}

// updateStatus is the plugin's latest install status for the registration.
func (a *Agent) updateStatus(plugin string) *api.UpdateStatus {
	if a.upd == nil {
		return nil
	}
	return a.upd.u.Status(plugin)
}

// agentPlugins is the supervisor as the updater drives it.
type agentPlugins struct{ a *Agent }

func (p agentPlugins) Refresh(string) {
	if err := p.a.setSpecs(); err != nil {
		p.a.log.Error("switching plugin binary", "err", err)
	}
}

func (p agentPlugins) Observe(name string, fn func(supervisor.Lifecycle)) func() {
	return p.a.sup.Observe(name, fn)
}

func (p agentPlugins) State(name string) (supervisor.State, string) {
	pl := p.a.sup.Plugin(name)
	if pl == nil {
		return supervisor.StateStopped, ""
	}
	st := pl.Status()
	return st.State, st.Version
}
