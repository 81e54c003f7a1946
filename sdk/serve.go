package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigil-hids/vigil/internal/memtrim"
	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

// GRPCPlugin is the go-plugin glue for Vigil plugins. The plugin side serves
// Impl; the host side gets a pluginpb.PluginClient from GRPCClient.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl is the plugin, on the plugin side only.
	Impl Plugin
	// Logger is the plugin's logger, on the plugin side only.
	Logger hclog.Logger
	// Batch tunes batching; zero fields take DefaultBatchOptions.
	Batch BatchOptions
}

// GRPCServer registers the plugin's gRPC service.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pluginpb.RegisterPluginServer(s, newServer(p.Impl, p.Logger, p.Batch))
	return nil
}

// GRPCClient returns the host's client for the plugin's service.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return pluginpb.NewPluginClient(c), nil
}

// PluginSets returns the go-plugin VersionedPlugins for this SDK's protocol.
func PluginSets(p *GRPCPlugin) map[int]plugin.PluginSet {
	return map[int]plugin.PluginSet{ProtocolVersion: {PluginName: p}}
}

// Serve runs the plugin made by f until the host closes it. It is the whole
// of a plugin's main function. Run by hand, outside a host, it prints a
// message saying so and exits.
func Serve(f Factory) {
	log := hclog.New(&hclog.LoggerOptions{
		Level:      hclog.Info,
		Output:     os.Stderr,
		JSONFormat: true, // go-plugin relays JSON log lines into the host's log
	})
	go exitWithParent(os.Getppid(), log)
	// Keep resident memory near the working set: drop the file pages that
	// start-up touched, then now and again (see internal/memtrim).
	memtrim.Schedule(nil, 15*time.Second, 5*time.Minute)
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: PluginSets(&GRPCPlugin{Impl: f(log), Logger: log}),
		GRPCServer:       plugin.DefaultGRPCServer,
		Logger:           log,
	})
}

// exitWithParent ends the plugin when its host is gone. The host also sets a
// parent-death signal, but that cannot cover every way a process can be
// re-parented, so the plugin checks for itself.
func exitWithParent(ppid int, log hclog.Logger) {
	if ppid <= 1 {
		return
	}
	for range time.Tick(time.Second) {
		if os.Getppid() != ppid {
			log.Error("host process is gone, exiting", "host_pid", ppid)
			os.Exit(3)
		}
	}
}

// server is the plugin side of the protocol.
type server struct {
	pluginpb.UnimplementedPluginServer
	impl  Plugin
	log   hclog.Logger
	batch BatchOptions

	mu      sync.Mutex
	name    string
	running bool
	stopRun context.CancelFunc // ends the current Run, if any
	runDone chan struct{}      // closed when the current Run has returned
	stopped bool               // Shutdown was called: a Run arriving late must not start
}

func newServer(impl Plugin, log hclog.Logger, opts BatchOptions) *server {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	def := DefaultBatchOptions
	if opts.MaxEvents <= 0 {
		opts.MaxEvents = def.MaxEvents
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = def.MaxBytes
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = def.FlushInterval
	}
	if opts.Pending <= 0 {
		opts.Pending = def.Pending
	}
	return &server{impl: impl, log: log, batch: opts}
}

func (s *server) pluginName(ctx context.Context) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.name == "" {
		if info, err := s.impl.Info(ctx); err == nil {
			s.name = info.Name
		}
	}
	if s.name == "" {
		return "plugin"
	}
	return s.name
}

func (s *server) Info(ctx context.Context, _ *pluginpb.InfoRequest) (*pluginpb.InfoResponse, error) {
	info, err := s.impl.Info(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "info: %v", err)
	}
	cfg, err := s.impl.DefaultConfig(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%s: default config: %v", info.Name, err)
	}
	defaults, err := json.Marshal(cfg)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%s: encoding default config: %v", info.Name, err)
	}
	schema, err := Schema(cfg)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%s: config schema: %v", info.Name, err)
	}
	resp := &pluginpb.InfoResponse{
		Name:           info.Name,
		Version:        info.Version,
		Description:    info.Description,
		ApiVersions:    []uint32{ProtocolVersion},
		ConfigDefaults: defaults,
		ConfigSchema:   schema,
	}
	if _, ok := s.impl.(Tasker); ok {
		resp.Capabilities = append(resp.Capabilities, "task")
	}
	return resp, nil
}

func (s *server) Configure(ctx context.Context, req *pluginpb.ConfigureRequest) (*pluginpb.ConfigureResponse, error) {
	name := s.pluginName(ctx)
	if req.LogLevel != "" {
		lvl := hclog.LevelFromString(req.LogLevel)
		if lvl == hclog.NoLevel {
			return nil, status.Errorf(codes.InvalidArgument, "%s.log_level must be one of trace, debug, info, warn, error (got %q)", name, req.LogLevel)
		}
		s.log.SetLevel(lvl)
	}
	cfg, err := s.impl.DefaultConfig(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%s: default config: %v", name, err)
	}
	if err := DecodeConfig(name, req.Config, cfg); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := s.impl.Configure(ctx, cfg); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%s: configure: %v", name, err)
	}
	return &pluginpb.ConfigureResponse{}, nil
}

func (s *server) Run(_ *pluginpb.RunRequest, stream grpc.ServerStreamingServer[pluginpb.EventBatch]) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return status.Error(codes.FailedPrecondition, "run: already running")
	}
	if s.stopped {
		// The host's Run call lost the race with its Shutdown call.
		s.mu.Unlock()
		return status.Error(codes.FailedPrecondition, "run: plugin is shut down")
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	s.running, s.stopRun, s.runDone = true, cancel, make(chan struct{})
	done := s.runDone
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running, s.stopRun = false, nil
		close(done)
		s.mu.Unlock()
	}()

	clock := NewCoarseClock(MinCoarseResolution)
	defer clock.Stop()
	b := newBatcher(s.batch, clock)

	runErr := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				runErr <- fmt.Errorf("panic in Run: %v\n%s", r, debug.Stack())
			}
		}()
		runErr <- s.impl.Run(ctx, b)
	}()
	stop := make(chan struct{})
	sendErr := make(chan error, 1)
	go func() { sendErr <- b.send(stop, stream.Send) }()

	select {
	case err := <-runErr:
		// Run ended on its own or because Shutdown asked: flush what is
		// queued onto the stream, which the host still reads, so that every
		// emitted event is delivered or counted.
		close(stop)
		serr := <-sendErr
		if err != nil && !errors.Is(err, context.Canceled) {
			s.log.Error("run failed", "error", err)
			return status.Errorf(codes.Aborted, "%s: run: %v", s.pluginName(ctx), err)
		}
		return serr
	case err := <-sendErr:
		// The host stopped reading: stop the plugin's work.
		cancel()
		<-runErr
		return err
	}
}

func (s *server) Task(ctx context.Context, req *pluginpb.TaskRequest) (*pluginpb.TaskResponse, error) {
	t, ok := s.impl.(Tasker)
	if !ok {
		return nil, status.Errorf(codes.Unimplemented, "%s does not accept tasks", s.pluginName(ctx))
	}
	res, err := t.Task(ctx, TaskRequest{ID: req.Id, Name: req.Name, Args: req.Args})
	if err != nil {
		return nil, status.Errorf(codes.Unknown, "%s: task %s (%s): %v", s.pluginName(ctx), req.Name, req.Id, err)
	}
	return &pluginpb.TaskResponse{Result: res}, nil
}

// Shutdown ends Run first, letting it flush its queued events onto the
// stream (the host keeps reading until the stream closes), then calls the
// plugin's Shutdown.
func (s *server) Shutdown(ctx context.Context, req *pluginpb.ShutdownRequest) (*pluginpb.ShutdownResponse, error) {
	if req.DeadlineUnixNano > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, time.Unix(0, req.DeadlineUnixNano))
		defer cancel()
	}
	s.mu.Lock()
	stopRun, done := s.stopRun, s.runDone
	s.stopped = true
	s.mu.Unlock()
	if stopRun != nil {
		stopRun()
		select {
		case <-done:
		case <-ctx.Done():
			return nil, status.Errorf(codes.DeadlineExceeded, "%s: shutdown: run did not stop before the deadline", s.pluginName(ctx))
		}
	}
	if err := s.impl.Shutdown(ctx); err != nil {
		return nil, status.Errorf(codes.Unknown, "%s: shutdown: %v", s.pluginName(ctx), err)
	}
	return &pluginpb.ShutdownResponse{}, nil
}
