package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/selfupdate"
	"github.com/vigil-hids/vigil/host/supervisor"
	"github.com/vigil-hids/vigil/host/update"
	"github.com/vigil-hids/vigil/signing"
)

// SelfUpdate lets the fleet's desired HostVersion replace vigil-host's own
// binary (package selfupdate). cmd/vigil-host builds it after Startup.
type SelfUpdate struct {
	Updater *selfupdate.Updater
	// Trust verifies the release manifest read from etcd (the update
	// section's trust file, or roots and keyring); the agent's plugin
	// updates share it.
	Trust *update.TrustStore
	// Trial is set when this run is the trial of a newly installed binary:
	// the agent runs the health gate.
	Trial *selfupdate.Trial
	// Last is the latest self-update result, reported until a new one.
	Last *api.UpdateStatus
	// SpreadWindow spreads the fleet's downloads (update.Spread).
	SpreadWindow time.Duration
	// Health, if set, is one more check of the trial's health gate (the
	// fault-injection builds of the tests use it).
	Health func() error
}

// hostUpdate is the agent's self-update worker.
type hostUpdate struct {
	su      *SelfUpdate
	restart chan string

	mu      sync.Mutex
	status  *api.UpdateStatus
	want    string          // latest target version asked for
	busy    string          // version being installed
	inTrial bool            // the health gate runs
	refused map[string]bool // refused in this run: not tried again until a restart or a new keyring
	retries int
}

func newHostUpdate(su *SelfUpdate) *hostUpdate {
	if su == nil {
		return nil
	}
	h := &hostUpdate{su: su, restart: make(chan string, 1), status: su.Last, refused: map[string]bool{}}
	if su.Trial != nil {
		h.inTrial = true
		h.status = &api.UpdateStatus{Target: su.Trial.Version, Running: su.Trial.Version, State: api.UpdateHealthCheck, At: time.Now().UTC()}
	}
	return h
}

// RestartRequested delivers a reason when vigil-host must restart into the
// binary now at its path: a new version was installed, or a trial failed
// and the previous binary is back. The caller closes the agent and exits
// with selfupdate.ExitRestart (systemd) or execs the binary.
func (a *Agent) RestartRequested() <-chan string {
	if a.hu == nil {
		return nil
	}
	return a.hu.restart
}

// HostUpdate reports the latest self-update for the registration value
// (control.HostUpdateReporter).
func (a *Agent) HostUpdate() *api.UpdateStatus {
	if a.hu == nil {
		return nil
	}
	a.hu.mu.Lock()
	defer a.hu.mu.Unlock()
	if a.hu.status == nil {
		return nil
	}
	s := *a.hu.status
	return &s
}

func (h *hostUpdate) set(s api.UpdateStatus) {
	s.At = time.Now().UTC()
	h.mu.Lock()
	h.status = &s
	h.mu.Unlock()
}

// startHostGate runs the health gate when this run is a trial.
func (a *Agent) startHostGate() {
	if a.hu == nil || a.hu.su.Trial == nil {
		return
	}
	t := a.hu.su.Trial
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		err := a.hu.su.Updater.Gate(a.ctx, *t, a.hostHealthy)
		switch {
		case err == nil:
			a.hu.set(api.UpdateStatus{Target: t.Version, Running: t.Version, State: api.UpdateInstalled})
			a.log.Info("vigil-host update passed its health gate", "version", t.Version, "previous", t.Previous)
			a.hu.mu.Lock()
			a.hu.inTrial = false
			want := a.hu.want
			a.hu.mu.Unlock()
			a.considerHostVersion(want)
		case errors.Is(err, selfupdate.ErrRolledBack):
			a.hu.set(api.UpdateStatus{Target: t.Version, Running: t.Previous, State: api.UpdateRolledBack, Error: err.Error()})
			a.requestRestart(err.Error())
		case a.ctx.Err() != nil:
		default:
			a.log.Error("vigil-host health gate", "error", err)
		}
	}()
}

func (a *Agent) requestRestart(reason string) {
	select {
	case a.hu.restart <- reason:
	default:
	}
}

// hostHealthy is the trial's health check: the control loop holds its
// registration (when the host has one), and every plugin that should run
// runs (held by a gate such as the emergency stop or a breaker counts as
// healthy: the host did what it was told).
func (a *Agent) hostHealthy() error {
	if h := a.hu.su.Health; h != nil {
		if err := h(); err != nil {
			return err
		}
	}
	if a.ctl != nil {
		if cs := a.ctl.Status(); !cs.Connected {
			return fmt.Errorf("control loop not registered in etcd (last error: %s)", cs.LastError)
		}
	}
	var bad []string
	for _, s := range a.sup.Status() {
		switch s.State {
		case supervisor.StateRunning, supervisor.StateStopped, supervisor.StateHeld:
		case supervisor.StateFailed:
			if s.ConfigError == "" {
				bad = append(bad, fmt.Sprintf("plugin %s failed: %s", s.Name, s.LastError))
			}
		default:
			msg := fmt.Sprintf("plugin %s is %s", s.Name, s.State)
			if s.LastError != "" {
				msg += ": " + s.LastError
			}
			bad = append(bad, msg)
		}
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "; "))
	}
	return nil
}

// wantHostVersion acts on the desired state's HostVersion (called by
// Apply). It returns an error only when the host cannot update itself at
// all; refusals of a release go into HostUpdate instead.
func (a *Agent) wantHostVersion(ds api.DesiredState) error {
	target := api.TargetVersion(a.cfg.HostName, api.HostReleaseName, ds.HostVersion, ds.HostRollout)
	if target == "" || target == strings.TrimPrefix(a.opts.Version, "v") {
		if a.hu != nil {
			// Nothing to do now, nor after a trial in progress passes.
			a.hu.mu.Lock()
			a.hu.want = ""
			a.hu.mu.Unlock()
		}
		return nil
	}
	if a.hu == nil {
		return fmt.Errorf("host_version %s: this host cannot update itself (self-update needs the update and server sections)", target)
	}
	a.considerHostVersion(target)
	return nil
}

// considerHostVersion starts installing target unless it runs, is being
// installed, is on trial, or was refused before.
func (a *Agent) considerHostVersion(target string) {
	h := a.hu
	h.mu.Lock()
	h.want = target
	if target == "" || h.inTrial || h.busy != "" || h.refused[target] || a.ctx.Err() != nil {
		h.mu.Unlock()
		return
	}
	skip, err := h.su.Updater.Check(target)
	if err != nil || skip != "" {
		if err != nil && !h.refused[target] {
			h.refused[target] = true
			if errors.Is(err, selfupdate.ErrFailedBefore) && h.status != nil && h.status.Target == target && h.status.State == api.UpdateRolledBack {
				// The rollback this run reports already says why.
				h.mu.Unlock()
				return
			}
			state := api.UpdateRefused
			if errors.Is(err, selfupdate.ErrFailedBefore) {
				state = api.UpdateRolledBack
			}
			h.mu.Unlock()
			h.set(api.UpdateStatus{Target: target, Running: h.su.Updater.Running(), State: state, Error: err.Error()})
			a.log.Warn("vigil-host update not tried", "version", target, "error", err)
			return
		}
		h.mu.Unlock()
		return
	}
	h.busy = target
	h.mu.Unlock()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.installHost(target)
	}()
}

// hostKeyringChanged forgets the vigil-host versions refused in this run
// and considers the desired one again: a new release keyring may list the
// key that signed it. A version that failed its health gate is refused
// again by the self-update state.
func (a *Agent) hostKeyringChanged() {
	h := a.hu
	h.mu.Lock()
	clear(h.refused)
	want := h.want
	h.mu.Unlock()
	if want != "" {
		a.log.Info("new release keyring: considering the desired vigil-host version again", "version", want)
		a.considerHostVersion(want)
	}
}

// installHost downloads, verifies and installs target, then asks for the
// restart into it.
func (a *Agent) installHost(target string) {
	h := a.hu
	u := h.su.Updater
	running := u.Running()
	done := func(s api.UpdateStatus, refused bool) {
		h.set(s)
		h.mu.Lock()
		h.busy = ""
		if refused {
			h.refused[target] = true
		}
		h.mu.Unlock()
	}
	if d := update.Spread(a.cfg.HostName, api.HostReleaseName, target, h.su.SpreadWindow); d > 0 {
		a.log.Info("vigil-host update waits for its moment of the spread window", "version", target, "wait", d.Round(time.Millisecond))
		select {
		case <-a.ctx.Done():
			done(api.UpdateStatus{Target: target, Running: running, State: api.UpdateFailed, Error: "host stopping"}, false)
			return
		case <-time.After(d):
		}
	}
	h.set(api.UpdateStatus{Target: target, Running: running, State: api.UpdateDownloading})
	rel, err := a.fetchHostRelease(target)
	if err == nil {
		h.set(api.UpdateStatus{Target: target, Running: running, State: api.UpdateVerifying})
		_, err = u.Install(rel)
		_ = os.Remove(rel.Binary)
	}
	if err != nil {
		if a.ctx.Err() != nil {
			done(api.UpdateStatus{Target: target, Running: running, State: api.UpdateFailed, Error: "host stopping"}, false)
			return
		}
		refused := !errors.Is(err, update.ErrDownload) && !errors.Is(err, errNoManifest)
		state := api.UpdateRefused
		if !refused {
			state = api.UpdateFailed
		}
		a.log.Error("vigil-host update", "version", target, "state", state, "error", err)
		done(api.UpdateStatus{Target: target, Running: running, State: state, Error: err.Error()}, refused)
		if !refused {
			a.retryHostLater(target)
		}
		return
	}
	h.set(api.UpdateStatus{Target: target, Running: running, State: api.UpdateHealthCheck})
	a.log.Info("vigil-host update installed, restarting into it", "version", target, "previous", running)
	a.requestRestart(fmt.Sprintf("vigil-host %s installed", target))
}

var errNoManifest = errors.New("selfupdate: release manifest not found in etcd")

// retryHostLater considers the desired version again after a capped,
// growing delay (a download failure or a manifest not yet published).
func (a *Agent) retryHostLater(target string) {
	h := a.hu
	h.mu.Lock()
	h.retries++
	d := time.Duration(min(h.retries, 6)) * 10 * time.Second
	h.mu.Unlock()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		select {
		case <-a.ctx.Done():
		case <-time.After(d):
			h.mu.Lock()
			want := h.want
			h.mu.Unlock()
			if want == target {
				a.considerHostVersion(want)
			}
		}
	}()
}

// fetchHostRelease reads the release manifest of this host's platform from
// etcd (readRelease) and downloads the verified binary next to the target
// (same file system as the swap).
func (a *Agent) fetchHostRelease(version string) (selfupdate.Release, error) {
	if a.ctl == nil || a.cfg.ServerLink() == nil {
		return selfupdate.Release{}, errors.New("selfupdate: needs the control and server sections")
	}
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Minute)
	defer cancel()
	rctx, rcancel := context.WithTimeout(ctx, 15*time.Second)
	raw, err := readRelease(rctx, a.ctl.Client(), a.ctl.Keyspace(), api.HostReleaseName, version, runtime.GOOS, runtime.GOARCH)
	rcancel()
	if err != nil {
		return selfupdate.Release{}, fmt.Errorf("%w: %w", errNoManifest, err)
	}
	sm, err := signing.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return selfupdate.Release{}, err
	}
	link := a.cfg.ServerLink()
	cli, err := link.HTTPClient(0)
	if err != nil {
		return selfupdate.Release{}, err
	}
	u := a.hu.su.Updater
	now := time.Now()
	a.hu.su.Trust.Refresh(ctx, func(ctx context.Context) ([]byte, error) {
		return readKeyring(ctx, a.ctl.Client(), a.ctl.Keyspace())
	}, now, 0)
	path, _, err := update.Fetch(ctx, update.Request{
		Manifest: raw, Trust: a.hu.su.Trust.Trust(),
		Expect: signing.Expect{Plugin: api.HostReleaseName, OS: runtime.GOOS, Arch: runtime.GOARCH,
			Running: u.Running(), HostVersion: u.Running(), Now: now},
		Source: update.Source{Client: cli, BaseURL: link.URL},
		Dir:    u.Dir(),
	})
	if err != nil {
		return selfupdate.Release{}, err
	}
	return selfupdate.Release{Manifest: sm, Binary: path}, nil
}
