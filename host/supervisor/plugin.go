package supervisor

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

// State is where a supervised plugin is in its life.
type State string

// Plugin states.
const (
	StateStopped     State = "stopped"     // disabled, or the host is stopping
	StateStarting    State = "starting"    // launching, handshake, Info, Configure
	StateRunning     State = "running"     // Run stream open
	StateBackoff     State = "backoff"     // died; waiting to restart
	StateQuarantined State = "quarantined" // died young too often; waits for a new spec
	StateFailed      State = "failed"      // cannot start until its spec changes (e.g. config rejected)
	StateHeld        State = "held"        // a start gate (breaker, emergency stop) holds it
)

// Spec says which plugin to run and how. The supervisor compares specs to
// decide between nothing, a live reconfigure and a restart.
type Spec struct {
	Name string
	// Path is the plugin binary.
	Path string
	// SHA256 pins the binary (hex). Empty means the file is hashed at each
	// start and that hash is what go-plugin verifies before exec.
	SHA256   string
	Enabled  bool
	Config   json.RawMessage
	LogLevel string
}

func (s Spec) sameBinary(o Spec) bool { return s.Path == o.Path && s.SHA256 == o.SHA256 }

func (s Spec) sameSettings(o Spec) bool {
	return bytes.Equal(s.Config, o.Config) && s.LogLevel == o.LogLevel
}

// Status is a plugin's state as the supervisor measured it.
type Status struct {
	Name       string    `json:"name"`
	Path       string    `json:"path"`
	Version    string    `json:"version,omitempty"`
	State      State     `json:"state"`
	PID        int       `json:"pid,omitempty"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	Restarts   int       `json:"restarts"`
	YoungDeath int       `json:"young_deaths"`
	NextStart  time.Time `json:"next_start,omitzero"`
	LastError  string    `json:"last_error,omitempty"`
	ErrorAt    time.Time `json:"error_at,omitzero"`
	// ConfigError is why the newest config was refused while the plugin
	// kept its previous one; empty when the newest config is in force.
	ConfigError string `json:"config_error,omitempty"`
	// Held says which gate holds the plugin, in StateHeld.
	Held string `json:"held,omitempty"`
}

// EventSink receives the plugin's event batches; it must never block.
type EventSink interface {
	Submit(b *pluginpb.EventBatch)
	// Restarted tells the sink a new plugin process has started, whose
	// cumulative counters begin again at zero.
	Restarted()
	// SetVersion records the version the running plugin reported.
	SetVersion(version string)
}

// Hooks let resource governance take part in a plugin's life. Every field is
// optional.
type Hooks struct {
	// Gate is asked before each start; a non-empty reason holds the plugin
	// (StateHeld) and it is asked again after wait or on Poke.
	Gate func(name string) (reason string, wait time.Duration)
	// PrepareSpawn runs on the spawner thread just before the plugin is
	// forked (cgroup placement); restore runs right after.
	PrepareSpawn func(name string, cmd *exec.Cmd) (restore func(), err error)
	// Started is called with the pid of each new plugin process.
	Started func(name string, pid int)
	// Exited is called when that process is gone.
	Exited func(name string, pid int)
}

// instance is one running plugin process.
type instance struct {
	client  *plugin.Client
	rpc     pluginpb.PluginClient
	pid     int
	started time.Time
	cancel  context.CancelFunc // ends the Run stream
	dead    chan error         // the stream's end: nil after a requested stop
	asked   chan struct{}      // closed when the host asked the plugin to stop
}

// Plugin supervises one plugin: it starts the process, restarts it with
// backoff when it dies, quarantines a crash loop and applies new specs.
type Plugin struct {
	m      *Manager
	events EventSink
	log    hclog.Logger
	stderr *tail

	wake chan struct{}

	mu      sync.Mutex
	spec    Spec
	gen     int // bumped by each changed spec
	status  Status
	good    json.RawMessage // last config the plugin accepted
	inst    *instance
	quarGen int // the spec generation that was quarantined or failed
}

func newPlugin(m *Manager, spec Spec, events EventSink) *Plugin {
	return &Plugin{
		m:      m,
		events: events,
		log:    m.log.Named(spec.Name),
		stderr: newTail(4096),
		wake:   make(chan struct{}, 1),
		spec:   spec,
		gen:    1,
		status: Status{Name: spec.Name, Path: spec.Path, State: StateStopped},
	}
}

// Update sets the desired spec; the plugin's loop applies it.
func (p *Plugin) Update(spec Spec) {
	p.mu.Lock()
	if !specEqual(p.spec, spec) {
		p.spec = spec
		p.gen++
		p.status.Path = spec.Path
	}
	p.mu.Unlock()
	p.poke()
}

func specEqual(a, b Spec) bool {
	return a.Name == b.Name && a.sameBinary(b) && a.Enabled == b.Enabled && a.sameSettings(b)
}

func (p *Plugin) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Status returns a copy of the plugin's status.
func (p *Plugin) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

// Task runs an on-demand task on the running plugin.
func (p *Plugin) Task(ctx context.Context, id, name string, args json.RawMessage) (json.RawMessage, error) {
	p.mu.Lock()
	inst, st := p.inst, p.status.State
	p.mu.Unlock()
	if inst == nil || st != StateRunning {
		return nil, fmt.Errorf("%s: task %s: plugin is not running (state %s)", p.spec.Name, name, st)
	}
	resp, err := inst.rpc.Task(ctx, &pluginpb.TaskRequest{Id: id, Name: name, Args: args})
	if err != nil {
		return nil, fmt.Errorf("%s: task %s: %s", p.spec.Name, name, status.Convert(err).Message())
	}
	return resp.Result, nil
}

func (p *Plugin) desired() (Spec, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.spec, p.gen
}

func (p *Plugin) setState(s State, mut func(*Status)) {
	p.mu.Lock()
	p.status.State = s
	if mut != nil {
		mut(&p.status)
	}
	p.mu.Unlock()
}

func (p *Plugin) recordError(err error) {
	now := p.m.clock.Now()
	p.mu.Lock()
	p.status.LastError = err.Error()
	p.status.ErrorAt = now
	p.mu.Unlock()
	p.log.Error("plugin failed", "error", err)
}

// loop is the plugin's supervision loop; it returns after ctx is done and
// the process is stopped.
func (p *Plugin) loop(ctx context.Context) {
	bo := p.m.newBackoff(p.spec.Name)
	for ctx.Err() == nil {
		spec, gen := p.desired()
		p.mu.Lock()
		parked := p.quarGen == gen
		p.mu.Unlock()
		switch {
		case !spec.Enabled:
			p.setState(StateStopped, func(s *Status) { s.PID, s.NextStart, s.Held = 0, time.Time{}, "" })
			p.idle(ctx, 0)
			continue
		case parked:
			p.idle(ctx, 0)
			continue
		}
		if p.m.hooks.Gate != nil {
			if reason, wait := p.m.hooks.Gate(spec.Name); reason != "" {
				p.setState(StateHeld, func(s *Status) { s.Held, s.PID = reason, 0 })
				p.idle(ctx, wait)
				continue
			}
		}

		inst, err := p.start(ctx, spec)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			p.recordError(err)
			p.notify(LifeStartFailed, spec, 0, err)
			if errors.Is(err, errNoUsableConfig) || errors.Is(err, errWrongPlugin) || errors.Is(err, errIncompatible) {
				// Restarting cannot help: wait for a new spec.
				p.mu.Lock()
				p.quarGen = gen
				p.status.State = StateFailed
				p.mu.Unlock()
				continue
			}
			p.died(ctx, bo, gen, 0)
			continue
		}
		lived, requested := p.supervise(ctx, inst)
		if ctx.Err() != nil {
			return
		}
		if requested {
			bo.Reset()
			continue
		}
		p.died(ctx, bo, gen, lived)
	}
}

// idle waits for a new spec, a poke, wait (if > 0) or ctx.
func (p *Plugin) idle(ctx context.Context, wait time.Duration) {
	var timer <-chan time.Time
	if wait > 0 {
		timer = p.m.clock.After(wait)
	}
	select {
	case <-ctx.Done():
	case <-p.wake:
	case <-timer:
	}
}

// died handles an unrequested end of the plugin: backoff, or quarantine after
// QuarantineAfter young deaths in a row.
func (p *Plugin) died(ctx context.Context, bo backoff, gen int, lived time.Duration) {
	opts := &p.m.opts
	p.mu.Lock()
	p.status.Restarts++
	if lived < opts.YoungAge {
		p.status.YoungDeath++
	} else {
		p.status.YoungDeath = 0
		bo.Reset()
	}
	young := p.status.YoungDeath
	p.mu.Unlock()
	if young >= opts.QuarantineAfter {
		p.mu.Lock()
		p.quarGen = gen
		p.status.State = StateQuarantined
		p.status.PID = 0
		p.status.LastError = fmt.Sprintf("quarantined after %d starts that each died within %s; last: %s",
			young, opts.YoungAge, p.status.LastError)
		p.mu.Unlock()
		p.log.Error("plugin quarantined: it keeps dying young; it restarts when its spec changes",
			"young_deaths", young)
		return
	}
	delay := bo.Next()
	next := p.m.clock.Now().Add(delay)
	p.setState(StateBackoff, func(s *Status) { s.NextStart, s.PID = next, 0 })
	p.log.Info("restarting plugin after backoff", "delay", delay, "young_deaths", young)
	select {
	case <-ctx.Done():
	case <-p.m.clock.After(delay):
	}
}

// Plugin start errors that a restart cannot fix.
var (
	errNoUsableConfig = errors.New("supervisor: no usable config")
	errWrongPlugin    = errors.New("supervisor: binary serves another plugin")
	errIncompatible   = errors.New("supervisor: incompatible plugin API version")
)

func (p *Plugin) start(ctx context.Context, spec Spec) (*instance, error) {
	p.setState(StateStarting, func(s *Status) { s.NextStart, s.Held = time.Time{}, "" })
	p.stderr.Reset()
	name := spec.Name
	sum, err := binarySum(spec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	cmd := exec.Command(spec.Path)
	// The host's environment is not passed on (SkipHostEnv): a plugin gets
	// a fixed PATH and its identity, nothing an operator's shell had.
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"VIGIL_HOST_NAME=" + p.m.opts.HostName,
		"VIGIL_PLUGIN_NAME=" + name,
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig: syscall.SIGKILL, // no plugin outlives a killed host
		Setpgid:   true,            // so the plugin's children can be killed with it
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: sdk.PluginSets(&sdk.GRPCPlugin{}),
		Cmd:              cmd,
		SecureConfig:     &plugin.SecureConfig{Checksum: sum, Hash: sha256.New()},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		SkipHostEnv:      true,
		StartTimeout:     p.m.opts.StartTimeout,
		Logger:           p.log,
		Stderr:           p.stderr,
	})
	err = p.m.spawner.Do(func() error {
		if p.m.hooks.PrepareSpawn != nil {
			restore, err := p.m.hooks.PrepareSpawn(name, cmd)
			if err != nil {
				return err
			}
			defer restore()
		}
		_, err := client.Start()
		return err
	})
	if err != nil {
		p.kill(client, cmd)
		return nil, p.startError(name, spec.Path, err)
	}
	pid := 0
	if cmd.Process != nil {
		pid = cmd.Process.Pid
	}
	if p.m.hooks.Started != nil {
		p.m.hooks.Started(name, pid)
	}
	inst := &instance{client: client, pid: pid, started: p.m.clock.Now(), dead: make(chan error, 1), asked: make(chan struct{})}
	fail := func(err error) (*instance, error) {
		p.kill(client, cmd)
		p.exited(name, pid)
		return nil, err
	}
	rpcc, err := client.Client()
	if err != nil {
		return fail(fmt.Errorf("%s: connecting: %w", name, err))
	}
	raw, err := rpcc.Dispense(sdk.PluginName)
	if err != nil {
		return fail(fmt.Errorf("%s: dispensing: %w", name, err))
	}
	inst.rpc = raw.(pluginpb.PluginClient)

	cctx, cancel := context.WithTimeout(ctx, p.m.opts.CallTimeout)
	info, err := inst.rpc.Info(cctx, &pluginpb.InfoRequest{HostVersion: p.m.opts.HostVersion})
	cancel()
	if err != nil {
		return fail(fmt.Errorf("%s: info: %w", name, callError(err, p.m.opts.CallTimeout)))
	}
	if info.Name != name {
		return fail(fmt.Errorf("%w: %s serves plugin %q, but the config names it %q", errWrongPlugin, spec.Path, info.Name, name))
	}
	if !hasAPI(info.ApiVersions, sdk.ProtocolVersion) {
		return fail(fmt.Errorf("%w: %s %s implements plugin API %v, this host speaks %d", errIncompatible, name, info.Version, info.ApiVersions, sdk.ProtocolVersion))
	}
	p.mu.Lock()
	p.status.Version, p.status.PID, p.status.StartedAt = info.Version, pid, inst.started
	p.mu.Unlock()

	if err := p.configure(ctx, inst, spec); err != nil {
		return fail(err)
	}

	runCtx, runCancel := context.WithCancel(context.Background())
	stream, err := inst.rpc.Run(runCtx, &pluginpb.RunRequest{})
	if err != nil {
		runCancel()
		return fail(fmt.Errorf("%s: run: %w", name, err))
	}
	inst.cancel = runCancel
	p.events.SetVersion(info.Version)
	p.events.Restarted()
	go p.read(inst, stream)
	p.mu.Lock()
	p.inst = inst
	p.status.State = StateRunning
	p.mu.Unlock()
	p.log.Info("plugin running", "version", info.Version, "pid", pid)
	p.notify(LifeRunning, spec, pid, nil)
	return inst, nil
}

// configure sends the spec's config; if the plugin refuses it, the last
// config it accepted is sent again and the refusal is reported.
func (p *Plugin) configure(ctx context.Context, inst *instance, spec Spec) error {
	err := p.send(ctx, inst, spec.Config, spec.LogLevel)
	if err == nil {
		p.mu.Lock()
		p.good, p.status.ConfigError = spec.Config, ""
		p.mu.Unlock()
		return nil
	}
	if status.Code(err) != codes.InvalidArgument {
		return fmt.Errorf("%s: configure: %w", spec.Name, callError(err, p.m.opts.CallTimeout))
	}
	msg := status.Convert(err).Message()
	p.mu.Lock()
	good := p.good
	p.status.ConfigError = msg
	p.mu.Unlock()
	p.log.Error("config rejected; keeping the previous config", "error", msg)
	if good == nil {
		return fmt.Errorf("%w: %s: config rejected and no earlier config was accepted: %s", errNoUsableConfig, spec.Name, msg)
	}
	if err := p.send(ctx, inst, good, spec.LogLevel); err != nil {
		return fmt.Errorf("%s: re-applying the previous config: %w", spec.Name, callError(err, p.m.opts.CallTimeout))
	}
	return nil
}

func (p *Plugin) send(ctx context.Context, inst *instance, cfg json.RawMessage, level string) error {
	cctx, cancel := context.WithTimeout(ctx, p.m.opts.CallTimeout)
	defer cancel()
	_, err := inst.rpc.Configure(cctx, &pluginpb.ConfigureRequest{Config: cfg, LogLevel: level, HostName: p.m.opts.HostName})
	return err
}

// read forwards the Run stream to the event sink until it ends.
func (p *Plugin) read(inst *instance, stream pluginpb.Plugin_RunClient) {
	for {
		b, err := stream.Recv()
		if err != nil {
			select {
			case <-inst.asked:
				inst.dead <- nil
			default:
				if err == io.EOF {
					err = errors.New("plugin ended its event stream on its own")
				}
				inst.dead <- err
			}
			return
		}
		p.events.Submit(b)
	}
}

// supervise watches a running plugin until it dies, its spec asks for a
// restart or a stop, or ctx ends. It reports how long the plugin lived and
// whether the end was requested.
func (p *Plugin) supervise(ctx context.Context, inst *instance) (time.Duration, bool) {
	spec, _ := p.desired()
	for {
		select {
		case err := <-inst.dead:
			lived := p.m.clock.Now().Sub(inst.started)
			err = streamError(err)
			if tail := p.stderr.String(8); tail != "" {
				err = fmt.Errorf("%w; stderr: %s", err, tail)
			}
			p.recordError(fmt.Errorf("%s: plugin died after %s: %w", spec.Name, lived.Round(time.Millisecond), err))
			p.stop(inst, false)
			p.notify(LifeDied, spec, inst.pid, err)
			return lived, false
		case <-ctx.Done():
			p.stop(inst, true)
			return 0, true
		case <-p.wake:
			next, _ := p.desired()
			blocked := ""
			if p.m.hooks.Gate != nil && next.Enabled {
				blocked, _ = p.m.hooks.Gate(next.Name)
			}
			switch {
			case !next.Enabled || blocked != "" || !next.sameBinary(spec):
				p.stop(inst, true)
				return 0, true
			case !next.sameSettings(spec):
				if err := p.configure(ctx, inst, next); err != nil {
					p.recordError(err)
					p.stop(inst, false)
					p.notify(LifeDied, spec, inst.pid, err)
					return p.m.clock.Now().Sub(inst.started), false
				}
				spec = next
			}
		}
	}
}

// stop ends a plugin process: a graceful Shutdown (which lets the plugin
// flush its events) within ShutdownTimeout if graceful, then SIGKILL to the
// plugin's process group, so its children go with it.
func (p *Plugin) stop(inst *instance, graceful bool) {
	close(inst.asked)
	if graceful {
		deadline := time.Now().Add(p.m.opts.ShutdownTimeout)
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		_, err := inst.rpc.Shutdown(ctx, &pluginpb.ShutdownRequest{DeadlineUnixNano: deadline.UnixNano()})
		cancel()
		if err != nil {
			p.recordError(fmt.Errorf("%s: shutdown: %w; killing it", p.spec.Name, callError(err, p.m.opts.ShutdownTimeout)))
		} else {
			// The plugin has flushed; wait for its stream to close.
			select {
			case <-inst.dead:
			case <-time.After(time.Until(deadline) + 100*time.Millisecond):
			}
		}
	}
	inst.cancel()
	p.kill(inst.client, nil)
	p.exited(p.spec.Name, inst.pid)
	p.mu.Lock()
	p.inst = nil
	p.status.PID = 0
	p.mu.Unlock()
}

// kill ends the process group and lets go-plugin reap the process.
func (p *Plugin) kill(client *plugin.Client, cmd *exec.Cmd) {
	if rc := client.ReattachConfig(); rc != nil && rc.Pid > 0 {
		_ = syscall.Kill(-rc.Pid, syscall.SIGKILL)
	} else if cmd != nil && cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	client.Kill()
}

func (p *Plugin) exited(name string, pid int) {
	if p.m.hooks.Exited != nil && pid > 0 {
		p.m.hooks.Exited(name, pid)
	}
}

// startError turns go-plugin's start failures into messages that name the
// problem.
func (p *Plugin) startError(name, path string, err error) error {
	msg := err.Error()
	stderr := p.stderr.String(6)
	switch {
	case errors.Is(err, plugin.ErrChecksumsDoNotMatch):
		return fmt.Errorf("%s: %s does not match its pinned sha256; refusing to run it", name, path)
	case strings.Contains(msg, "incompatible API version"):
		return fmt.Errorf("%w: %s: %s (this host speaks plugin API %d)", errIncompatible, name, msg, sdk.ProtocolVersion)
	case strings.Contains(stderr, "This binary is a plugin"):
		return fmt.Errorf("%s: %s is not a Vigil plugin: its handshake cookie does not match", name, path)
	case strings.Contains(msg, "Unrecognized remote plugin message"):
		first, _, _ := strings.Cut(strings.TrimPrefix(msg, "Unrecognized remote plugin message: "), "\n")
		return fmt.Errorf("%s: %s is not a Vigil plugin: it printed %q instead of the go-plugin handshake", name, path, first)
	case stderr != "":
		return fmt.Errorf("%s: starting %s: %s; stderr: %s", name, path, msg, stderr)
	}
	return fmt.Errorf("%s: starting %s: %w", name, path, err)
}

func binarySum(spec Spec) ([]byte, error) {
	if spec.SHA256 != "" {
		sum, err := hex.DecodeString(spec.SHA256)
		if err != nil || len(sum) != sha256.Size {
			return nil, fmt.Errorf("sha256 %q is not 64 hex digits", spec.SHA256)
		}
		return sum, nil
	}
	f, err := os.Open(spec.Path)
	if err != nil {
		return nil, fmt.Errorf("plugin binary: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("plugin binary: %w", err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return nil, fmt.Errorf("plugin binary %s is not an executable file", spec.Path)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("plugin binary: hashing %s: %w", spec.Path, err)
	}
	return h.Sum(nil), nil
}

func hasAPI(vs []uint32, v uint32) bool {
	for _, x := range vs {
		if x == v {
			return true
		}
	}
	return false
}

// callError names a timeout as one.
func callError(err error, limit time.Duration) error {
	if status.Code(err) == codes.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer within %s", limit)
	}
	if st, ok := status.FromError(err); ok {
		return errors.New(st.Message())
	}
	return err
}

func streamError(err error) error {
	if st, ok := status.FromError(err); ok && st.Code() != codes.OK {
		return errors.New(st.Message())
	}
	return err
}
