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
	"sort"
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

// Event is a decoded event as the host would see it.
type Event struct {
	Type     string
	Time     time.Time
	Alert    bool
	Severity sdk.Severity
	// Fields holds each field's value: a string, an int64 or a bool.
	Fields map[string]any
	// Batch is the sequence number of the batch that carried the event.
	Batch uint64
}

// Str returns the string field key, or "" if it is absent or not a string.
func (e Event) Str(key string) string { s, _ := e.Fields[key].(string); return s }

// Int returns the integer field key, or 0.
func (e Event) Int(key string) int64 { n, _ := e.Fields[key].(int64); return n }

// Bool returns the boolean field key, or false.
func (e Event) Bool(key string) bool { b, _ := e.Fields[key].(bool); return b }

// String formats the event for failure messages.
func (e Event) String() string {
	keys := make([]string, 0, len(e.Fields))
	for k := range e.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%s{", e.Type)
	if e.Alert {
		fmt.Fprintf(&b, "alert %s; ", e.Severity)
	}
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s=%v", k, e.Fields[k])
	}
	b.WriteString("}")
	return b.String()
}

// OfType matches events of type typ, for WaitEvents.
func OfType(typ string) func(Event) bool { return func(e Event) bool { return e.Type == typ } }

// Alerts matches alerts, for WaitEvents.
func Alerts() func(Event) bool { return func(e Event) bool { return e.Alert } }

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

// decodeBatch decodes every record of batch with NextRecord and ParseEvent,
// checking the batch's own claims (count, alerts lane) on the way.
func decodeBatch(batch *pluginpb.EventBatch) ([]Event, error) {
	var evs []Event
	var v sdk.EventView
	for rest := batch.Events; len(rest) > 0; {
		rec, r, err := sdk.NextRecord(rest)
		if err != nil {
			return evs, err
		}
		rest = r
		if err := sdk.ParseEvent(rec, &v); err != nil {
			return evs, err
		}
		ev := Event{
			Type:     string(v.Type),
			Time:     time.Unix(0, v.TimeUnixNano),
			Alert:    v.Alert,
			Severity: v.Severity,
			Fields:   make(map[string]any, v.NumFields()),
			Batch:    batch.Seq,
		}
		for it := v.Fields(); it.Next(); {
			switch it.Kind {
			case sdk.KindInt:
				ev.Fields[string(it.Key)] = it.Int
			case sdk.KindBool:
				ev.Fields[string(it.Key)] = it.Int != 0
			default:
				ev.Fields[string(it.Key)] = string(it.Str)
			}
			if err := it.Err(); err != nil {
				return evs, err
			}
		}
		if batch.Alerts != ev.Alert {
			return evs, fmt.Errorf("event %s in a batch with alerts=%t", ev, batch.Alerts)
		}
		evs = append(evs, ev)
	}
	if len(evs) != int(batch.Count) {
		return evs, fmt.Errorf("batch says count %d but carries %d records", batch.Count, len(evs))
	}
	return evs, nil
}

func (h *Harness) notifyLocked() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// Done is closed when the Run stream has ended, by Stop or because the
// plugin's Run returned. It is nil before Start.
func (h *Harness) Done() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.done
}

// RunErr returns how the Run stream ended: nil for a clean end or a
// cancel by Stop, else the plugin's error as an *RPCError.
func (h *Harness) RunErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.runErr
}

// Events returns a copy of every event received so far.
func (h *Harness) Events() []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Event(nil), h.events...)
}

// Received returns how many events have arrived.
func (h *Harness) Received() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.events)
}

// Batches returns how many batches have arrived, counting the empty ones
// that carry only counters.
func (h *Harness) Batches() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.batches
}

// Emitted returns the plugin's cumulative emitted total, as of the last
// batch.
func (h *Harness) Emitted() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.emitted
}

// Dropped returns the plugin's cumulative drops, all reasons, as of the
// last batch.
func (h *Harness) Dropped() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var n uint64
	for _, d := range h.dropped {
		n += d
	}
	return n
}

// DroppedBy returns the cumulative drops by reason, as of the last batch.
func (h *Harness) DroppedBy() map[string]uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return copyMap(h.dropped)
}

// Counters returns the plugin's counters as of the last batch.
func (h *Harness) Counters() map[string]uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return copyMap(h.counters)
}

func copyMap(m map[string]uint64) map[string]uint64 {
	c := make(map[string]uint64, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// WaitEvents waits until at least n received events match pred (nil
// matches all) and returns the matching ones. It fails the test after
// timeout, or if the stream ends first.
func (h *Harness) WaitEvents(pred func(Event) bool, n int, timeout time.Duration) []Event {
	h.t.Helper()
	var got []Event
	ok := h.wait(timeout, func() bool {
		got = got[:0]
		for _, e := range h.events {
			if pred == nil || pred(e) {
				got = append(got, e)
			}
		}
		return len(got) >= n
	})
	if !ok {
		h.t.Fatalf("sdktest: waited %v for %d matching events, got %d (of %d received; run error: %v)", timeout, n, len(got), h.Received(), h.RunErr())
	}
	return got
}

// WaitFor waits until cond returns true, checking each time a batch
// arrives (and every 10ms), and fails the test with what after timeout.
// cond may call the Harness's methods.
func (h *Harness) WaitFor(what string, timeout time.Duration, cond func() bool) {
	h.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		h.mu.Lock()
		ch := h.changed
		h.mu.Unlock()
		select {
		case <-ch:
		case <-tick.C:
		case <-deadline.C:
			if cond() {
				return
			}
			h.t.Fatalf("sdktest: waited %v for %s (received %d, emitted %d, dropped %d, run error: %v)",
				timeout, what, h.Received(), h.Emitted(), h.Dropped(), h.RunErr())
		}
	}
}

// Settle waits until the plugin's totals account for every event:
// Emitted() == Received() + Dropped() with at least minEmitted emitted,
// while the plugin keeps running. (After Stop the totals settle too, since
// Shutdown flushes the plugin's queue onto the stream.)
func (h *Harness) Settle(minEmitted uint64, timeout time.Duration) {
	h.t.Helper()
	h.WaitFor(fmt.Sprintf("emitted >= %d and emitted == received + dropped", minEmitted), timeout, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		var d uint64
		for _, n := range h.dropped {
			d += n
		}
		return h.emitted >= minEmitted && h.emitted == uint64(len(h.events))+d
	})
}

// wait calls cond under the lock until it is true, the stream ends, or
// timeout passes.
func (h *Harness) wait(timeout time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		if cond() {
			h.mu.Unlock()
			return true
		}
		ch, done := h.changed, h.done
		h.mu.Unlock()
		if done != nil {
			select {
			case <-done:
				h.mu.Lock()
				ok := cond()
				h.mu.Unlock()
				return ok
			default:
			}
		}
		select {
		case <-ch:
		case <-deadline.C:
			return false
		}
	}
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
