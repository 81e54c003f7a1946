package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/vigil-hids/vigil/host/breaker"
	"github.com/vigil-hids/vigil/host/cgroup"
	"github.com/vigil-hids/vigil/host/config"
	"github.com/vigil-hids/vigil/host/governor"
)

// governance puts each plugin in its own cgroup behind its breaker, and the
// whole agent behind the agent-wide rule (package governor). Without
// cgroups it runs on breakers alone, reading /proc.
type governance struct {
	cfg config.Governance
	log *slog.Logger
	cg  *cgroup.Manager // nil: breakers alone
	gov *governor.Governor

	mu      sync.Mutex
	groups  map[string]*cgroup.Group
	plugins map[string]*governor.Plugin
	limits  map[string]breaker.Limits
	drops   map[string]uint64 // rate-limited events already reported
}

// startGovernance sets up cgroups (cleaning those of a previous run) and
// starts the governor. poke is called when a breaker changes, so the
// supervisor re-checks its gate.
func startGovernance(a *Agent, poke func()) (*governance, error) {
	c := a.cfg.Governance
	log := a.opts.Log.With("component", "governor")
	g := &governance{cfg: c, log: log, groups: map[string]*cgroup.Group{}, plugins: map[string]*governor.Plugin{},
		limits: map[string]breaker.Limits{}, drops: map[string]uint64{}}
	gov, err := governor.New(governor.Config{
		Interval: c.Interval, Profile: c.Profile,
		AgentCPUPercent: c.AgentCPUPercent, AgentSamples: c.AgentSamples,
	}, nil, log)
	if err != nil {
		return nil, err
	}
	g.gov = gov
	var hostGroup *cgroup.Group
	if c.Cgroups {
		m, err := cgroup.NewManager(cgroup.Config{Parent: c.CgroupParent}, log)
		switch {
		case errors.Is(err, cgroup.ErrUnavailable):
			log.Warn("cgroups unavailable: plugins are governed by breakers alone, without hard CPU and memory limits", "reason", err)
		case err != nil:
			return nil, err
		default:
			g.cg = m
			if n, err := m.CleanupStale(); err != nil {
				log.Warn("cleaning cgroups of a previous run", "err", err)
			} else if len(n) > 0 {
				log.Warn("removed cgroups of a previous run (and any plugin left in them)", "groups", n)
			}
			if hostGroup, err = m.EnterHost(cgroup.Limits{}); err != nil {
				return nil, fmt.Errorf("governance: moving the host into its cgroup: %w", err)
			}
		}
	}
	if err := gov.SetHost(hostGroup); err != nil {
		return nil, err
	}
	gov.OnTrip(func(plugin string, t breaker.Trip) {
		log.Warn("breaker tripped: stopping plugin", "plugin", plugin, "reason", t.Reason, "detail", t.Detail)
		poke()
	})
	gov.OnAgentTrip(func(stopped bool, t breaker.Trip) {
		if stopped {
			log.Error("agent-wide protection: stopping every plugin", "reason", t.Reason, "detail", t.Detail)
		} else {
			log.Warn("agent-wide protection lifted: plugins may start again")
		}
		poke()
	})
	if err := gov.Start(a.ctx); err != nil {
		return nil, err
	}
	return g, nil
}

// resolve returns a plugin's limits: the profile, then the config file's
// overrides, then the desired state's.
func (g *governance) resolve(name string, fromFleet json.RawMessage) (breaker.Limits, error) {
	var o breaker.Overrides
	if m := g.cfg.Plugins[name]; len(m) > 0 {
		b, _ := json.Marshal(m)
		if err := o.Overlay(b); err != nil {
			return breaker.Limits{}, fmt.Errorf("governance.plugins.%s: %w", name, err)
		}
	}
	if len(fromFleet) > 0 {
		if err := o.Overlay(fromFleet); err != nil {
			return breaker.Limits{}, fmt.Errorf("plugins.%s.limits: %w", name, err)
		}
	}
	return o.Resolve(g.gov.Config().Profile, "limits."+name)
}

// apply resolves and sets a plugin's limits. Refused overrides keep the
// plugin's previous limits, or the profile's if it has none yet: a plugin
// is never left ungoverned by a bad override.
func (g *governance) apply(name string, fromFleet json.RawMessage) {
	l, err := g.resolve(name, fromFleet)
	if err == nil {
		g.setLimits(name, l)
		return
	}
	g.mu.Lock()
	_, had := g.limits[name]
	g.mu.Unlock()
	g.log.Error("plugin limits refused; keeping the previous ones", "plugin", name, "err", err)
	if !had {
		l, perr := breaker.Overrides{}.Resolve(g.gov.Config().Profile, "limits."+name)
		if perr != nil {
			g.log.Error("profile limits", "plugin", name, "err", perr)
			return
		}
		g.setLimits(name, l)
	}
}

// setLimits applies limits to a plugin's breaker and cgroup, adding the
// plugin on first use.
func (g *governance) setLimits(name string, l breaker.Limits) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.limits[name] = l
	if p, ok := g.plugins[name]; ok {
		p.SetLimits(l)
	} else {
		g.plugins[name] = g.gov.Add(name, l)
	}
	if grp, ok := g.groups[name]; ok {
		if err := grp.Update(governor.CgroupLimits(l)); err != nil {
			g.log.Error("updating cgroup limits", "plugin", name, "err", err)
		}
	}
}

// allow is the supervisor's start gate for a plugin.
func (g *governance) allow(name string) (string, time.Duration) {
	g.mu.Lock()
	p := g.plugins[name]
	g.mu.Unlock()
	if p == nil {
		return "", 0
	}
	if ok, wait := p.Allow(); !ok {
		st := g.gov.Status()
		if st.Agent.State == breaker.Open {
			return "agent-wide protection: " + st.AgentReason, wait
		}
		return "breaker " + p.Status().Summary(), wait
	}
	return "", 0
}

// prepareSpawn places the plugin in its cgroup before it runs (on the
// spawner thread).
func (g *governance) prepareSpawn(name string, cmd *exec.Cmd) (func(), error) {
	if g.cg == nil {
		return func() {}, nil
	}
	g.mu.Lock()
	grp, ok := g.groups[name]
	if !ok {
		var err error
		grp, err = g.cg.Create(strings.ToLower(name), governor.CgroupLimits(g.limits[name]))
		if err != nil {
			g.mu.Unlock()
			return nil, fmt.Errorf("%s: creating its cgroup: %w", name, err)
		}
		g.groups[name] = grp
	}
	g.mu.Unlock()
	restore, err := grp.PrepareSpawn(cmd)
	if err != nil {
		return nil, fmt.Errorf("%s: placing it in its cgroup: %w", name, err)
	}
	return func() {
		if err := restore(); err != nil {
			g.log.Error("spawner thread could not leave the plugin's cgroup", "plugin", name, "err", err)
		}
	}, nil
}

func (g *governance) started(name string, pid int) {
	g.mu.Lock()
	p, grp := g.plugins[name], g.groups[name]
	g.mu.Unlock()
	if p != nil {
		p.Attach(pid, grp)
	}
}

// exited stops watching a plugin process and kills what is left in its
// cgroup: the plugin's children go with it.
func (g *governance) exited(name string, _ int) {
	g.mu.Lock()
	p, grp := g.plugins[name], g.groups[name]
	g.mu.Unlock()
	if p != nil {
		p.Detach()
	}
	if grp != nil {
		if err := grp.Kill(); err != nil {
			g.log.Error("killing what is left in the plugin's cgroup", "plugin", name, "err", err)
		}
	}
}

// reportDrops feeds the events the pipeline's rate limit refused, per
// plugin, to the flood breakers.
func (g *governance) reportDrops(rateLimited map[string]uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for name, n := range rateLimited {
		p := g.plugins[name]
		if p == nil {
			continue
		}
		if prev := g.drops[name]; n > prev {
			p.ReportDrops(n - prev)
		}
		g.drops[name] = n
	}
}

// summary is a plugin's breaker in one line.
func (g *governance) summary(name string) string {
	g.mu.Lock()
	p := g.plugins[name]
	g.mu.Unlock()
	if p == nil {
		return ""
	}
	return p.Status().Summary()
}

// close stops the governor and removes the plugins' cgroups (the plugins
// are stopped by then).
func (g *governance) close() error {
	errs := []error{g.gov.Close()}
	g.mu.Lock()
	defer g.mu.Unlock()
	for name, grp := range g.groups {
		if err := grp.Delete(); err != nil {
			errs = append(errs, fmt.Errorf("removing the cgroup of %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}
