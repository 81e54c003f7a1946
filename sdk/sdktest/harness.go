// Package sdktest runs a Vigil plugin in-process for its own tests, with no
// host and no subprocess. The harness talks to the plugin through
// go-plugin's in-memory gRPC connection with the SDK's own server, so Info,
// Configure, Run, Task and Shutdown, the batching and the packed event wire
// format are exactly those of production; only the process boundary is
// missing.
//
//	func TestSamples(t *testing.T) {
//		h := sdktest.New(t, myplugin.New)
//		if err := h.Configure(`{"interval": "1s"}`); err != nil {
//			t.Fatal(err)
//		}
//		h.Start()
//		evs := h.WaitEvents(sdktest.OfType("loadavg"), 1, 5*time.Second)
//		if evs[0].Int("cpus") < 1 { ... }
//	}
//
// Everything the harness starts is stopped by t.Cleanup. Because a panic
// outside Run's goroutine still ends the test binary, exercise those with a
// real plugin process (the host's tests do).
package sdktest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

// Option changes how New sets up the harness.
type Option func(*options)

type options struct {
	batch    sdk.BatchOptions
	hostName string
	logLevel string
}

// WithBatch sets the plugin side's batching (zero fields keep the SDK
// defaults), e.g. a small Pending to provoke drops.
func WithBatch(b sdk.BatchOptions) Option { return func(o *options) { o.batch = b } }

// WithHostName sets the host name sent with Configure (default "sdktest").
func WithHostName(name string) Option { return func(o *options) { o.hostName = name } }

// WithLogLevel sets the log level sent with Configure (default "debug").
func WithLogLevel(level string) Option { return func(o *options) { o.logLevel = level } }

// RPCError is an error a plugin method returned over gRPC. Its Error is
// the message alone, as the host logs it, so tests can compare it with
// the plugin's own wording.
type RPCError struct {
	Code codes.Code
	Msg  string
}

func (e *RPCError) Error() string { return e.Msg }

func rpcError(err error) error {
	if err == nil {
		return nil
	}
	if s, ok := status.FromError(err); ok {
		return &RPCError{Code: s.Code(), Msg: s.Message()}
	}
	return err
}

// Harness drives one plugin instance over the real protocol path.
type Harness struct {
	t      testing.TB
	impl   sdk.Plugin
	client pluginpb.PluginClient
	opts   options
	taskID int

	mu       sync.Mutex
	changed  chan struct{}
	events   []Event
	batches  int
	emitted  uint64
	dropped  map[string]uint64
	counters map[string]uint64
	cancel   context.CancelFunc
	done     chan struct{}
	runErr   error
}

// New makes a plugin with f (its logger writes to the test log) and
// connects a host-side client to it in memory. The plugin is not yet
// configured or running.
func New(t testing.TB, f sdk.Factory, opts ...Option) *Harness {
	t.Helper()
	o := options{hostName: "sdktest", logLevel: "debug"}
	for _, opt := range opts {
		opt(&o)
	}
	w := &testWriter{t: t}
	t.Cleanup(w.close) // registered first, so it runs last
	log := hclog.New(&hclog.LoggerOptions{Name: "plugin", Level: hclog.Debug, Output: w})
	impl := f(log)
	gp := &sdk.GRPCPlugin{Impl: impl, Logger: log, Batch: o.batch}
	client, server := plugin.TestPluginGRPCConn(t, false, sdk.PluginSets(gp)[sdk.ProtocolVersion])
	t.Cleanup(func() {
		// Stop the server first: client.Close alone asks the server to stop
		// itself from a handler goroutine, which races with go-plugin's own
		// bookkeeping and is not waited for.
		server.Stop()
		_ = client.Close()
	})
	raw, err := client.Dispense(sdk.PluginName)
	if err != nil {
		t.Fatalf("sdktest: dispensing plugin: %v", err)
	}
	h := &Harness{
		t:       t,
		impl:    impl,
		client:  raw.(pluginpb.PluginClient),
		opts:    o,
		changed: make(chan struct{}),
	}
	t.Cleanup(h.cleanup)
	return h
}

// Plugin returns the plugin instance under test.
func (h *Harness) Plugin() sdk.Plugin { return h.impl }

// Info calls Info and fails the test on error.
func (h *Harness) Info() *pluginpb.InfoResponse {
	h.t.Helper()
	resp, err := h.client.Info(context.Background(), &pluginpb.InfoRequest{HostVersion: "sdktest"})
	if err != nil {
		h.t.Fatalf("sdktest: Info: %v", err)
	}
	return resp
}

// Configure sends config, given as a string, []byte or json.RawMessage of
// JSON, or any other value to be marshalled, and returns the plugin's
// answer (an *RPCError on refusal).
func (h *Harness) Configure(config any) error {
	h.t.Helper()
	raw, err := toJSON(config)
	if err != nil {
		h.t.Fatalf("sdktest: encoding config: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = h.client.Configure(ctx, &pluginpb.ConfigureRequest{Config: raw, LogLevel: h.opts.logLevel, HostName: h.opts.hostName})
	return rpcError(err)
}

// ConfigureContext is Configure with the caller's context, e.g. a short
// deadline for a plugin that may hang.
func (h *Harness) ConfigureContext(ctx context.Context, config any) error {
	raw, err := toJSON(config)
	if err != nil {
		return err
	}
	_, err = h.client.Configure(ctx, &pluginpb.ConfigureRequest{Config: raw, LogLevel: h.opts.logLevel, HostName: h.opts.hostName})
	return rpcError(err)
}

// Task sends one task; args are encoded like Configure's config (nil sends
// no args).
func (h *Harness) Task(name string, args any) (json.RawMessage, error) {
	h.t.Helper()
	var raw []byte
	if args != nil {
		var err error
		if raw, err = toJSON(args); err != nil {
			h.t.Fatalf("sdktest: encoding task args: %v", err)
		}
	}
	h.mu.Lock()
	h.taskID++
	id := fmt.Sprintf("sdktest-%d", h.taskID)
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := h.client.Task(ctx, &pluginpb.TaskRequest{Id: id, Name: name, Args: raw})
	if err != nil {
		return nil, rpcError(err)
	}
	return resp.Result, nil
}

// Start calls Run and collects the event stream in the background until
// Stop, or until the plugin ends Run by itself (see Done).
func (h *Harness) Start() {
	h.t.Helper()
	h.mu.Lock()
	if h.cancel != nil {
		h.mu.Unlock()
		h.t.Fatal("sdktest: Start called twice")
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := h.client.Run(ctx, &pluginpb.RunRequest{})
	if err != nil {
		h.mu.Unlock()
		cancel()
		h.t.Fatalf("sdktest: Run: %v", err)
	}
	h.cancel, h.done = cancel, make(chan struct{})
	done := h.done
	h.mu.Unlock()
	go func() {
		defer close(done)
		err := h.recv(stream)
		h.mu.Lock()
		h.runErr = err
		h.notifyLocked()
		h.mu.Unlock()
	}()
}

func (h *Harness) recv(stream pluginpb.Plugin_RunClient) error {
	for {
		batch, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if status.Code(err) == codes.Canceled {
				return nil
			}
			return rpcError(err)
		}
		evs, err := decodeBatch(batch)
		if err != nil {
			h.t.Errorf("sdktest: batch %d: %v", batch.Seq, err)
		}
		h.mu.Lock()
		h.events = append(h.events, evs...)
		h.batches++
		h.emitted = batch.EmittedTotal
		h.dropped = batch.DroppedTotal
		h.counters = batch.Counters
		h.notifyLocked()
		h.mu.Unlock()
	}
}

func (h *Harness) notifyLocked() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// Stop stops the plugin as the host does: it calls Shutdown with a 10s
// deadline, which ends Run and lets the plugin flush its queued events onto
// the stream; then it waits for the stream to end (cancelling it if the
// plugin has not ended it within 10s). It returns Run's error, if the plugin
// failed rather than stopped, joined with Shutdown's. A Stop that follows
// Start before the plugin's Run has begun makes Run refuse to start, and
// Stop then returns "run: plugin is shut down"; wait for an event first.
func (h *Harness) Stop() error {
	h.t.Helper()
	ctx, c := context.WithTimeout(context.Background(), 10*time.Second)
	defer c()
	_, err := h.client.Shutdown(ctx, &pluginpb.ShutdownRequest{DeadlineUnixNano: time.Now().Add(10 * time.Second).UnixNano()})
	h.mu.Lock()
	cancel, done := h.cancel, h.done
	h.mu.Unlock()
	if cancel == nil {
		return rpcError(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		h.t.Fatalf("sdktest: Run did not end within 30s of being cancelled")
	}
	return errors.Join(h.RunErr(), rpcError(err))
}

// cleanup ends a Run the test left going.
func (h *Harness) cleanup() {
	h.mu.Lock()
	cancel, done := h.cancel, h.done
	h.mu.Unlock()
	if cancel != nil {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			h.t.Errorf("sdktest: Run did not end within 30s of being cancelled")
		}
	}
}

func toJSON(v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case string:
		return []byte(x), nil
	case []byte:
		return x, nil
	case json.RawMessage:
		return x, nil
	default:
		return json.Marshal(v)
	}
}

// testWriter sends the plugin's log lines to the test log until the test
// ends; later lines (from goroutines still stopping) are discarded, since
// testing panics on a log after the test.
type testWriter struct {
	mu     sync.Mutex
	t      testing.TB
	closed bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
}
