// Package vulnscan is the plugin that keeps the fleet's package inventory:
// it reads the host's dpkg, apk or rpm database, /etc/os-release and the
// running kernel (package collect), and emits an "inventory_digest" event
// with the digest of the canonical inventory at start, after every change
// of the package databases (inotify, once they have been quiet for the
// settle time) and on a slow rescan spread over the fleet by a hash of the
// host name. The full inventory goes up only when the server asks for it
// with the task "inventory", which it does for digests it has not seen:
// hosts built from one image share one digest, so the server stores and
// matches each inventory once.
package vulnscan

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"os"
	"sync"
	"time"

	hclog "github.com/hashicorp/go-hclog"

	"github.com/vigil-hids/vigil/plugins/vulnscan/collect"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/vuln/inventory"
)

// Name is the plugin's name, as written in host configs.
const Name = "vulnscan"

// Version is the plugin's version.
const Version = "0.1.0"

// Event types and the task name.
const (
	EventDigest    = "inventory_digest"
	EventError     = "inventory_error"
	TaskInventory  = "inventory"
	CounterScans   = "scans_total"
	CounterErrors  = "scan_errors_total"
	CounterChanges = "inventory_changes_total"
)

// Reasons a collection ran, as the "reason" field says.
const (
	ReasonStart  = "start"
	ReasonChange = "change"
	ReasonRescan = "rescan"
	ReasonConfig = "config"
)

// Options are what tests change; New uses the zero value.
type Options struct {
	// Clock drives the rescan schedule; nil is the system clock.
	Clock sdk.Clock
	// HostName spreads the rescans; empty is os.Hostname.
	HostName string
	// Collect reads the inventory under a root; nil is collect.Collect, or
	// with RPMReaderChild collect.CollectWith an rpm reader child.
	Collect func(root string) (*collect.Snapshot, error)
	// RPMReaderChild reads rpm databases in a child process of this
	// binary (/proc/self/exe RPMReaderArg …), under CPU, memory and time
	// limits. Only a binary whose main runs RPMReaderMain when
	// IsRPMReader(os.Args), as vigil-vulnscan's does, may set it; without
	// it rpm databases are read in the plugin's process, behind
	// collect.CheckRPM only.
	RPMReaderChild bool
}

// Plugin collects the inventory.
type Plugin struct {
	log     hclog.Logger
	clock   sdk.Clock
	host    string
	collect func(root string) (*collect.Snapshot, error)
	// rpmChild: read rpm databases in a reader child (Options.RPMReaderChild).
	rpmChild bool

	mu   sync.Mutex
	cfg  *Config
	last *Inventory // the last collection, served by the inventory task
	// stuck is set while a collection that outlived collect_timeout is
	// still running; no other starts until it ends.
	stuck bool

	reconfigured chan struct{}
}

// Inventory is the answer to the "inventory" task: the digest and the full
// inventory it covers, and the running kernel.
type Inventory struct {
	Digest string `json:"digest"`
	// Kernel is the running kernel, which the digest does not cover.
	Kernel string `json:"kernel,omitempty"`
	// Database is the path of the package database that was read.
	Database  string              `json:"database"`
	Inventory inventory.Inventory `json:"inventory"`
}

// New returns the plugin. It is the sdk.Factory passed to sdk.Serve.
func New(log hclog.Logger) sdk.Plugin { return NewWith(Options{})(log) }

// NewWith returns a factory of plugins with o.
func NewWith(o Options) sdk.Factory {
	return func(log hclog.Logger) sdk.Plugin {
		if o.Clock == nil {
			o.Clock = sdk.SystemClock()
		}
		if o.HostName == "" {
			o.HostName, _ = os.Hostname()
		}
		return &Plugin{log: log.Named(Name), clock: o.Clock, host: o.HostName, collect: o.Collect, rpmChild: o.RPMReaderChild, cfg: DefaultConfig(), reconfigured: make(chan struct{}, 1)}
	}
}

// Info implements sdk.Plugin.
func (p *Plugin) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: Name, Version: Version, Description: "package inventory (dpkg, rpm, apk) for fleet vulnerability search"}, nil
}

// DefaultConfig implements sdk.Plugin.
func (p *Plugin) DefaultConfig(context.Context) (sdk.Config, error) { return DefaultConfig(), nil }

// Configure implements sdk.Plugin. A running plugin collects again at once
// with the new config and restarts its watches and rescan schedule.
func (p *Plugin) Configure(_ context.Context, c sdk.Config) error {
	cfg, ok := c.(*Config)
	if !ok {
		return fmt.Errorf("config of type %T, want *vulnscan.Config", c)
	}
	p.mu.Lock()
	p.cfg = cfg
	p.mu.Unlock()
	select {
	case p.reconfigured <- struct{}{}:
	default:
	}
	return nil
}

func (p *Plugin) config() *Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

// RescanDelay returns when host's first rescan is due: a point in
// [0, interval) fixed by a hash of the host name, so a fleet's rescans are
// spread evenly instead of all landing at once after a restart.
func RescanDelay(host string, interval time.Duration) time.Duration {
	if interval <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(host))
	return time.Duration(h.Sum64() % uint64(interval))
}

// Run implements sdk.Plugin.
func (p *Plugin) Run(ctx context.Context, em sdk.Emitter) error {
	g := sdk.NewGuard(ctx, p.log, em, sdk.GuardOptions{Seed: Name + "/" + p.host})
	g.Go("scanner", func(ctx context.Context) error { return p.scanLoop(ctx, em) })
	g.Wait()
	return nil
}

// scanLoop collects, then watches and rescans until the config changes,
// and starts over with the new config.
func (p *Plugin) scanLoop(ctx context.Context, em sdk.Emitter) error {
	reason := ReasonStart
	for {
		select { // the config is read fresh below
		case <-p.reconfigured:
		default:
		}
		cfg := p.config()
		p.watch(ctx, em, cfg, reason)
		if ctx.Err() != nil {
			return nil
		}
		reason = ReasonConfig
	}
}

// Task implements sdk.Tasker: "inventory" returns the last collected
// inventory (collecting one if there is none yet) as JSON.
func (p *Plugin) Task(_ context.Context, req sdk.TaskRequest) (json.RawMessage, error) {
	switch req.Name {
	case TaskInventory:
		p.mu.Lock()
		inv := p.last
		p.mu.Unlock()
		if inv == nil {
			var err error
			if inv, err = p.collectNow(p.config()); err != nil {
				return nil, err
			}
		}
		return json.Marshal(inv)
	default:
		return nil, fmt.Errorf("unknown task %q (known: %s)", req.Name, TaskInventory)
	}
}

// Shutdown implements sdk.Plugin. The scanner has already stopped with
// Run's context.
func (p *Plugin) Shutdown(context.Context) error { return nil }
