package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/vigil-hids/vigil/host/config"
	"github.com/vigil-hids/vigil/host/sink"
	"github.com/vigil-hids/vigil/host/vulnreport"
)

// vulnscanPlugin names the config's vulnscan plugin: the one named
// "vulnscan" or running a vigil-vulnscan binary; "" when there is none.
func vulnscanPlugin(cfg config.Config) string {
	for _, p := range cfg.Plugins {
		if p.Name == "vulnscan" || filepath.Base(p.Path) == "vigil-vulnscan" {
			return p.Name
		}
	}
	return ""
}

// addVulnSink creates the inventory reporter when the host has a server
// link and a vulnscan plugin, and appends its pipeline tap to sinks.
func (a *Agent) addVulnSink(sinks []sink.Sink) ([]sink.Sink, error) {
	link, plugin := a.cfg.ServerLink(), vulnscanPlugin(a.cfg)
	if link == nil || plugin == "" {
		return sinks, nil
	}
	hc, err := link.HTTPClient(2 * time.Minute)
	if err != nil {
		return nil, fmt.Errorf("server link: %w", err)
	}
	a.vuln, err = vulnreport.New(vulnreport.Config{Host: a.cfg.HostName, URL: link.URL, Client: hc, Plugin: plugin, Log: a.opts.Log})
	if err != nil {
		return nil, err
	}
	a.sinks = append(a.sinks, "vulnreport:"+link.URL)
	return append(sinks, a.vuln.Sink()), nil
}

// startVulnReport runs the reporter once the supervisor exists; it asks
// the vulnscan plugin for its full inventory only when the server has not
// stored the digest.
func (a *Agent) startVulnReport() {
	if a.vuln == nil {
		return
	}
	plugin := vulnscanPlugin(a.cfg)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.vuln.Run(a.ctx, func(ctx context.Context) (json.RawMessage, error) {
			p := a.sup.Plugin(plugin)
			if p == nil {
				return nil, fmt.Errorf("no plugin %q", plugin)
			}
			return p.Task(ctx, "vulnreport", vulnreport.TaskInventory, nil)
		})
	}()
}

// VulnReport returns the inventory reporter's counters; ok is false when
// the host reports no inventory.
func (a *Agent) VulnReport() (vulnreport.Stats, bool) {
	if a.vuln == nil {
		return vulnreport.Stats{}, false
	}
	return a.vuln.Stats(), true
}
