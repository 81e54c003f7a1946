package testplugin_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"

	"github.com/vigil-hids/vigil/internal/syncbuf"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds the plugin's commands once per test run, as static
// binaries the way a release does.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "vigil-testplugin-bin")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "./cmd/...")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = &buildError{err: err, out: string(out)}
		}
	})
	if buildErr != nil {
		t.Fatalf("building the test binaries: %v", buildErr)
	}
	return binDir
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// launch starts a binary as vigil-host does: gRPC only, the SDK's
// handshake and plugin sets.
func launch(t *testing.T, name string) *plugin.Client {
	t.Helper()
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: sdk.PluginSets(&sdk.GRPCPlugin{}),
		Cmd:              exec.Command(filepath.Join(binaries(t), name)),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		StartTimeout:     5 * time.Second,
		Logger:           hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr}),
	})
	t.Cleanup(c.Kill)
	return c
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func TestBinaryServesTheProtocol(t *testing.T) {
	c := launch(t, "vigil-testplugin")
	rpc, err := c.Client()
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if v := c.NegotiatedVersion(); v != sdk.ProtocolVersion {
		t.Errorf("negotiated protocol %d, want %d", v, sdk.ProtocolVersion)
	}
	raw, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		t.Fatal(err)
	}
	pc := raw.(pluginpb.PluginClient)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := pc.Info(ctx, &pluginpb.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "testplugin" {
		t.Errorf("Info.Name = %q", info.Name)
	}
}

func TestBadBinariesAreRefused(t *testing.T) {
	tests := []struct {
		name string
		bin  string
		want []string // all must appear in the error
	}{
		{name: "protocol version 99", bin: "oldapi", want: []string{"99", "[1]"}},
		{name: "wrong magic cookie", bin: "badcookie", want: []string{"Failed to read any lines"}},
		{name: "garbage handshake", bin: "garbage", want: []string{"Unrecognized remote plugin message"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := launch(t, tt.bin)
			_, err := c.Client()
			if err == nil {
				t.Fatalf("%s was accepted", tt.bin)
			}
			t.Logf("%s refused: %v", tt.bin, err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestBinaryMisbehaves runs the real binary with the behaviours that end
// the process, which an in-process test cannot survive, and checks the
// host would see them.
func TestBinaryMisbehaves(t *testing.T) {
	tests := []struct {
		name    string
		config  string
		wantLog string // in the host-side log of the process's end
	}{
		{name: "crash at start", config: `{"crash_at_start": 7}`, wantLog: "exit status 7"},
		{name: "exit after", config: `{"exit_after": "100ms", "exit_code": 3}`, wantLog: "exit status 3"},
		{name: "panic after", config: `{"panic_after": "100ms"}`, wantLog: "exit status 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs syncbuf.Buffer
			c := plugin.NewClient(&plugin.ClientConfig{
				HandshakeConfig:  sdk.Handshake,
				VersionedPlugins: sdk.PluginSets(&sdk.GRPCPlugin{}),
				Cmd:              exec.Command(filepath.Join(binaries(t), "vigil-testplugin")),
				AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
				StartTimeout:     5 * time.Second,
				Logger:           hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: &logs}),
			})
			t.Cleanup(c.Kill)
			rpc, err := c.Client()
			if err != nil {
				t.Fatal(err)
			}
			raw, err := rpc.Dispense(sdk.PluginName)
			if err != nil {
				t.Fatal(err)
			}
			pc := raw.(pluginpb.PluginClient)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := pc.Configure(ctx, &pluginpb.ConfigureRequest{Config: []byte(tt.config)}); err != nil {
				t.Fatal(err)
			}
			stream, err := pc.Run(ctx, &pluginpb.RunRequest{})
			if err != nil {
				t.Fatal(err)
			}
			for {
				if _, err := stream.Recv(); err != nil {
					break // the process is gone
				}
			}
			deadline := time.Now().Add(10 * time.Second)
			for !c.Exited() || !strings.Contains(logs.String(), tt.wantLog) {
				if time.Now().After(deadline) {
					t.Fatalf("exited %t; log lacks %q:\n%s", c.Exited(), tt.wantLog, logs.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}
