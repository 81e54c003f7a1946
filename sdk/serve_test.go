package sdk_test

import (
	"context"
	"errors"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"

	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/sdktest"
)

type nopConfig struct{}

func (*nopConfig) Validate() error { return nil }

// tickPlugin emits one "tick" event at Run start and waits.
type tickPlugin struct{}

func newTick(hclog.Logger) sdk.Plugin { return tickPlugin{} }

func (tickPlugin) Info(context.Context) (sdk.Info, error) { return sdk.Info{Name: "tick"}, nil }
func (tickPlugin) DefaultConfig(context.Context) (sdk.Config, error) {
	return &nopConfig{}, nil
}
func (tickPlugin) Configure(context.Context, sdk.Config) error { return nil }
func (tickPlugin) Run(ctx context.Context, em sdk.Emitter) error {
	_ = em.Emit(&sdk.Event{Type: "tick"})
	<-ctx.Done()
	return nil
}
func (tickPlugin) Shutdown(context.Context) error { return nil }

func TestServeRunAfterShutdownIsRefused(t *testing.T) {
	h := sdktest.New(t, newTick)
	if err := h.Stop(); err != nil { // Shutdown before any Run
		t.Fatal(err)
	}
	h.Start()
	select {
	case <-h.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Run after Shutdown kept running")
	}
	var rerr *sdktest.RPCError
	if err := h.RunErr(); !errors.As(err, &rerr) || rerr.Code != codes.FailedPrecondition || rerr.Msg != "run: plugin is shut down" {
		t.Errorf("Run after Shutdown ended with %v", err)
	}
}

func TestServeTaskWithoutTasker(t *testing.T) {
	h := sdktest.New(t, newTick)
	if caps := h.Info().Capabilities; len(caps) != 0 {
		t.Errorf("capabilities %v for a plugin with no tasks", caps)
	}
	var rerr *sdktest.RPCError
	if _, err := h.Task("x", nil); !errors.As(err, &rerr) || rerr.Code != codes.Unimplemented || rerr.Msg != "tick does not accept tasks" {
		t.Errorf("Task = %v", err)
	}
}

func TestServeBadLogLevel(t *testing.T) {
	h := sdktest.New(t, newTick, sdktest.WithLogLevel("loud"))
	err := h.Configure(`{}`)
	if err == nil || err.Error() != `tick.log_level must be one of trace, debug, info, warn, error (got "loud")` {
		t.Errorf("Configure with log level loud = %v", err)
	}
}

func TestServeStopDeliversQueuedEvents(t *testing.T) {
	h := sdktest.New(t, newTick)
	h.Start()
	h.WaitEvents(sdktest.OfType("tick"), 1, 10*time.Second)
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	if h.Emitted() != 1 || h.Received() != 1 || h.RunErr() != nil {
		t.Errorf("after Stop: emitted %d, received %d, run error %v", h.Emitted(), h.Received(), h.RunErr())
	}
}
