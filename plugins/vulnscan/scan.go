package vulnscan

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/vigil-hids/vigil/plugins/vulnscan/collect"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/vuln/inventory"
)

// ErrStuck is returned while a collection that outlived collect_timeout
// is still running.
var ErrStuck = errors.New("vulnscan: a previous collection is still running")

// collectNow reads the inventory under cfg.Root and remembers it for the
// inventory task. In vigil-vulnscan, rpm databases are read in a child
// process killed after 90% of collect_timeout (readRPMIsolated), so a
// collection ends in time even on a database that would hang the reader
// in a way collect.CheckRPM does not foresee. As a backstop
// for anything else (a collect func given in Options, a blocked read),
// the collection runs in a goroutine of its own, is reported as failed
// after collect_timeout, and no other collection starts until it has
// ended. That goroutine is the one this plugin does not wait for: waiting
// is what a hang would make impossible.
func (p *Plugin) collectNow(cfg *Config) (*Inventory, error) {
	p.mu.Lock()
	if p.stuck {
		p.mu.Unlock()
		return nil, ErrStuck
	}
	p.mu.Unlock()
	type result struct {
		s   *collect.Snapshot
		err error
	}
	done := make(chan result, 1)
	collectFn := p.collect
	switch {
	case collectFn == nil && !p.rpmChild:
		collectFn = collect.Collect
	case collectFn == nil:
		timeout := cfg.CollectTimeout.D() * 9 / 10
		collectFn = func(root string) (*collect.Snapshot, error) {
			return collect.CollectWith(root, func(path string) ([]inventory.Package, error) {
				return readRPMIsolated(context.Background(), path, timeout)
			})
		}
	}
	go func() {
		s, err := collectFn(cfg.Root)
		done <- result{s, err}
	}()
	timer := time.NewTimer(cfg.CollectTimeout.D())
	defer timer.Stop()
	var r result
	select {
	case r = <-done:
	case <-timer.C:
		p.mu.Lock()
		p.stuck = true
		p.mu.Unlock()
		go func() {
			<-done
			p.mu.Lock()
			p.stuck = false
			p.mu.Unlock()
		}()
		return nil, fmt.Errorf("collecting under %s did not finish within %v; a package database may be corrupt", cfg.Root, cfg.CollectTimeout.D())
	}
	s, err := r.s, r.err
	if err != nil {
		return nil, err
	}
	inv := &Inventory{Digest: s.Inventory.Digest(), Kernel: s.Kernel, Database: s.Database, Inventory: s.Inventory}
	p.mu.Lock()
	p.last = inv
	p.mu.Unlock()
	return inv, nil
}

// scan collects and emits the digest, or an inventory_error event.
func (p *Plugin) scan(em sdk.Emitter, cfg *Config, reason string) {
	em.Counter(CounterScans).Add(1)
	p.mu.Lock()
	prev := p.last
	p.mu.Unlock()
	inv, err := p.collectNow(cfg)
	if err != nil {
		em.Counter(CounterErrors).Add(1)
		p.log.Warn("collecting the inventory failed", "root", cfg.Root, "reason", reason, "error", err)
		_ = em.Emit(&sdk.Event{Type: EventError, Severity: sdk.SevWarning, Fields: []sdk.Field{
			sdk.String("reason", reason), sdk.String("error", err.Error()),
		}})
		return
	}
	changed := prev == nil || prev.Digest != inv.Digest
	if changed && prev != nil {
		em.Counter(CounterChanges).Add(1)
	}
	o := inv.Inventory.OS
	p.log.Debug("inventory collected", "reason", reason, "digest", inv.Digest, "packages", len(inv.Inventory.Packages), "changed", changed)
	_ = em.Emit(&sdk.Event{Type: EventDigest, Severity: sdk.SevInfo, Fields: []sdk.Field{
		sdk.String("digest", inv.Digest),
		sdk.String("reason", reason),
		sdk.Bool("changed", changed),
		sdk.String("ecosystem", inv.Inventory.Ecosystem),
		sdk.String("os_id", o.ID),
		sdk.String("os_version_id", o.VersionID),
		sdk.String("os_codename", o.Codename),
		sdk.String("kernel", inv.Kernel),
		sdk.Int("packages", int64(len(inv.Inventory.Packages))),
		sdk.Int("partial", int64(len(inv.Inventory.Partial))),
	}})
}

// watch watches the package databases, collects (reason first), then
// collects again after each change of the databases and at each rescan,
// until ctx is done or the config changes.
func (p *Plugin) watch(ctx context.Context, em sdk.Emitter, cfg *Config, first string) {
	var wg sync.WaitGroup
	defer wg.Wait()
	sub, cancel := context.WithCancel(ctx)
	defer cancel()

	rescans := make(chan struct{}, 1)
	wg.Go(func() { p.rescanLoop(sub, cfg, rescans) })

	var events <-chan fsnotify.Event
	var errs <-chan error
	var names []string // base names of the watched databases
	if cfg.Watch {
		w, err := fsnotify.NewWatcher()
		if err != nil {
			p.log.Warn("watching the package databases failed; rescans only", "error", err)
		} else {
			defer w.Close()
			paths, _ := collect.Databases(cfg.Root)
			for _, path := range paths {
				// The directory, not the file: dpkg and apk replace their
				// databases by rename, which a file watch would lose.
				if err := w.Add(filepath.Dir(path)); err != nil {
					p.log.Warn("watching a package database failed", "path", path, "error", err)
					continue
				}
				names = append(names, filepath.Base(path))
			}
			events, errs = w.Events, w.Errors
		}
	}

	// The first scan only now that the databases are watched: a change
	// between the scan and the watch would be missed until the next
	// rescan.
	p.scan(em, cfg, first)

	// settle is armed by a change and fires once the databases have been
	// quiet for cfg.Settle: a package upgrade writes many times.
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.reconfigured:
			return
		case <-rescans:
			p.scan(em, cfg, ReasonRescan)
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if relevant(ev.Name, names) {
				settle.Reset(cfg.Settle.D())
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			p.log.Warn("package database watch", "error", err)
		case <-settle.C:
			p.scan(em, cfg, ReasonChange)
		}
	}
}

// relevant says whether a change of path may change a watched database:
// the database itself or its journal and temporary files (status-new,
// rpmdb.sqlite-wal).
func relevant(path string, names []string) bool {
	base := filepath.Base(path)
	for _, n := range names {
		if strings.HasPrefix(base, n) {
			return true
		}
	}
	return false
}

// rescanLoop asks for a rescan at the host's spread offset into the
// interval and then every interval, until ctx is done.
func (p *Plugin) rescanLoop(ctx context.Context, cfg *Config, rescans chan<- struct{}) {
	d := RescanDelay(p.host, cfg.RescanInterval.D())
	for {
		if err := p.clock.Sleep(ctx, d); err != nil {
			return
		}
		select {
		case rescans <- struct{}{}:
		case <-ctx.Done():
			return
		}
		d = cfg.RescanInterval.D()
	}
}
