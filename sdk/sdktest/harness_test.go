package sdktest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"

	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/sdktest"
)

// TestMain checks that the harness leaves no goroutine behind once each
// test's cleanups have run.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoConfig configures echoPlugin.
type echoConfig struct {
	Count  int    `json:"count" vigil:"min=0,max=100000"`
	Fail   string `json:"fail"`
	Tag    string `json:"tag" vigil:"enum=a|b"`
	Hidden int    `json:"-"`
}

func (c *echoConfig) Validate() error {
	if c.Fail == "validate" {
		return errors.New("echo.fail must not be \"validate\"")
	}
	return nil
}

// echoPlugin emits count events with one field of each kind, an alert
// every tenth, and then waits; or fails as its config says.
type echoPlugin struct {
	log hclog.Logger
	cfg *echoConfig
}

func newEcho(log hclog.Logger) sdk.Plugin { return &echoPlugin{log: log, cfg: &echoConfig{Tag: "a"}} }

func (p *echoPlugin) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "echo", Version: "0.0.1", Description: "test"}, nil
}
func (p *echoPlugin) DefaultConfig(context.Context) (sdk.Config, error) {
	return &echoConfig{Tag: "a"}, nil
}
func (p *echoPlugin) Configure(_ context.Context, c sdk.Config) error {
	cfg := c.(*echoConfig)
	if cfg.Fail == "configure" {
		return errors.New("refusing")
	}
	p.cfg = cfg
	return nil
}
func (p *echoPlugin) Run(ctx context.Context, em sdk.Emitter) error {
	if p.cfg.Fail == "run" {
		return errors.New("no can do")
	}
	em.Counter("runs").Add(1)
	for i := 0; i < p.cfg.Count; i++ {
		_ = em.Emit(&sdk.Event{
			Type:     "echo",
			Alert:    i%10 == 9,
			Severity: sdk.SevNotice,
			Fields:   []sdk.Field{sdk.Int("i", int64(i)), sdk.String("tag", p.cfg.Tag), sdk.Bool("even", i%2 == 0)},
		})
	}
	<-ctx.Done()
	return nil
}
func (p *echoPlugin) Shutdown(context.Context) error {
	if p.cfg.Fail == "shutdown" {
		return errors.New("stuck")
	}
	return nil
}
func (p *echoPlugin) Task(_ context.Context, req sdk.TaskRequest) (json.RawMessage, error) {
	if req.Name != "echo" {
		return nil, fmt.Errorf("unknown task %q", req.Name)
	}
	return req.Args, nil
}

func TestHarnessEventsAndTotals(t *testing.T) {
	h := sdktest.New(t, newEcho)
	if err := h.Configure(map[string]any{"count": 50, "tag": "b"}); err != nil {
		t.Fatal(err)
	}
	h.Start()
	evs := h.WaitEvents(sdktest.OfType("echo"), 50, 10*time.Second)
	alerts := h.WaitEvents(sdktest.Alerts(), 5, time.Second)
	for _, a := range alerts {
		if a.Int("i")%10 != 9 {
			t.Errorf("alert %s is not every tenth", a)
		}
	}
	seen := map[int64]bool{}
	for _, e := range evs {
		if e.Str("tag") != "b" || e.Bool("even") != (e.Int("i")%2 == 0) || e.Severity != sdk.SevNotice || e.Time.IsZero() {
			t.Errorf("event %s decoded wrong", e)
		}
		seen[e.Int("i")] = true
	}
	if len(seen) != 50 {
		t.Errorf("%d distinct events, want 50", len(seen))
	}
	h.Settle(50, 5*time.Second)
	if h.Dropped() != 0 || h.Batches() < 2 {
		t.Errorf("dropped %d, %d batches (alerts and telemetry travel apart)", h.Dropped(), h.Batches())
	}
	h.WaitFor("runs counter", 5*time.Second, func() bool { return h.Counters()["runs"] == 1 })
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Done():
	default:
		t.Error("Done not closed after Stop")
	}
	for _, e := range evs {
		want := "echo{even=true, i=0, tag=b}"
		if e.Int("i") == 9 {
			want = "echo{alert notice; even=false, i=9, tag=b}"
		} else if e.Int("i") != 0 {
			continue
		}
		if got := fmt.Sprint(e); got != want {
			t.Errorf("Event.String = %s, want %s", got, want)
		}
	}
}

func TestHarnessErrors(t *testing.T) {
	tests := []struct {
		name     string
		config   any
		wantCode codes.Code
		wantMsg  string
	}{
		{"tag rule", `{"tag": "c"}`, codes.InvalidArgument, `echo.tag must be one of a, b (got "c")`},
		{"validate", []byte(`{"fail": "validate"}`), codes.InvalidArgument, `echo.fail must not be "validate"`},
		{"configure", json.RawMessage(`{"fail": "configure"}`), codes.InvalidArgument, "echo: configure: refusing"},
		{"unknown key", `{"Hidden": 1}`, codes.InvalidArgument, `echo: decoding config: unknown key "Hidden"`},
	}
	h := sdktest.New(t, newEcho)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := h.Configure(tt.config)
			var rerr *sdktest.RPCError
			if !errors.As(err, &rerr) || rerr.Code != tt.wantCode || err.Error() != tt.wantMsg {
				t.Errorf("Configure = %v, want %s %q", err, tt.wantCode, tt.wantMsg)
			}
		})
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.ConfigureContext(ctx, `{}`); err == nil {
		t.Error("ConfigureContext with a cancelled context succeeded")
	}
	if got, err := h.Task("echo", map[string]int{"x": 1}); err != nil || string(got) != `{"x":1}` {
		t.Errorf("Task(echo) = %s, %v", got, err)
	}
	if _, err := h.Task("other", nil); err == nil || err.Error() != `echo: task other (sdktest-2): unknown task "other"` {
		t.Errorf("Task(other) = %v", err)
	}
}

func TestHarnessRunAndShutdownFailures(t *testing.T) {
	h := sdktest.New(t, newEcho)
	if err := h.Configure(`{"fail": "run"}`); err != nil {
		t.Fatal(err)
	}
	h.Start()
	select {
	case <-h.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Run error did not end the stream")
	}
	var rerr *sdktest.RPCError
	if err := h.RunErr(); !errors.As(err, &rerr) || rerr.Code != codes.Aborted || rerr.Msg != "echo: run: no can do" {
		t.Errorf("RunErr = %v", err)
	}

	h2 := sdktest.New(t, newEcho)
	if err := h2.Configure(`{"fail": "shutdown"}`); err != nil {
		t.Fatal(err)
	}
	h2.Start()
	if err := h2.Stop(); err == nil || !strings.Contains(err.Error(), "echo: shutdown: stuck") {
		t.Errorf("Stop = %v, want the Shutdown error", err)
	}
}

func TestHarnessInfo(t *testing.T) {
	h := sdktest.New(t, newEcho)
	info := h.Info()
	if info.Name != "echo" || len(info.ApiVersions) != 1 || info.ApiVersions[0] != sdk.ProtocolVersion {
		t.Errorf("Info = %v", info)
	}
	if string(info.ConfigDefaults) != `{"count":0,"fail":"","tag":"a"}` {
		t.Errorf("defaults = %s", info.ConfigDefaults)
	}
	if _, ok := h.Plugin().(*echoPlugin); !ok {
		t.Errorf("Plugin() = %T", h.Plugin())
	}
}

func TestFakeClock(t *testing.T) {
	start := time.Unix(1000, 0)
	c := sdktest.NewFakeClock(start)
	ctx, cancel := context.WithCancel(context.Background())
	c.OnSleep(func(n int) {
		if n == 2 {
			cancel()
		}
	})
	if err := c.Sleep(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Sleep(ctx, time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("second Sleep = %v, want the cancel that OnSleep made", err)
	}
	if err := c.Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("Sleep on a done context = %v", err)
	}
	c.Advance(time.Millisecond)
	if got, want := c.Now(), start.Add(time.Minute+time.Second+time.Millisecond); !got.Equal(want) {
		t.Errorf("Now = %v, want %v", got, want)
	}
	if got := c.Sleeps(); len(got) != 2 || got[0] != time.Second || got[1] != time.Minute {
		t.Errorf("Sleeps = %v", got)
	}
}
