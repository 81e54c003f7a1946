// Package status serves the host's state to `vigil-host status` over a unix
// socket that only root can open, and reads it back for the command.
package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/sink"
)

// Snapshot is the host's state at one moment.
type Snapshot struct {
	Host      string            `json:"host"`
	Version   string            `json:"version"`
	PID       int               `json:"pid"`
	StartedAt time.Time         `json:"started_at"`
	Labels    map[string]string `json:"labels,omitempty"`
	// CPUPercent is the host process's CPU use over the last sample, in
	// percent of one core; RSSBytes its resident memory.
	CPUPercent float64 `json:"cpu_percent"`
	RSSBytes   uint64  `json:"rss_bytes"`
	// Stopped is true while an emergency stop holds every plugin.
	Stopped bool     `json:"stopped"`
	Sinks   []string `json:"sinks"`
	Plugins []Plugin `json:"plugins"`
	// Control is the fleet connection, when the host has one.
	Control map[string]any `json:"control,omitempty"`
	// HostUpdate is the latest vigil-host self-update, Keyring the release
	// keyring in use (both as in the registration).
	HostUpdate *api.UpdateStatus  `json:"host_update,omitempty"`
	Keyring    *api.KeyringStatus `json:"keyring,omitempty"`
	// SinkCounts are the network sinks' counts by sink name: what they
	// took, delivered, hold and lost after the pipeline handed it over.
	SinkCounts map[string]sink.Counts `json:"sink_counts,omitempty"`
}

// Plugin is one plugin's state, counters and resource use.
type Plugin struct {
	Name        string            `json:"name"`
	Version     string            `json:"version,omitempty"`
	State       string            `json:"state"`
	PID         int               `json:"pid,omitempty"`
	Restarts    int               `json:"restarts"`
	LastError   string            `json:"last_error,omitempty"`
	ConfigError string            `json:"config_error,omitempty"`
	CPUPercent  float64           `json:"cpu_percent"`
	RSSBytes    uint64            `json:"rss_bytes"`
	Emitted     uint64            `json:"emitted"`
	Delivered   uint64            `json:"delivered"`
	Queued      uint64            `json:"queued"`
	Dropped     map[string]uint64 `json:"dropped,omitempty"`
	Counters    map[string]uint64 `json:"counters,omitempty"`
	Breaker     string            `json:"breaker,omitempty"`
	// Update is the latest release install for the plugin.
	Update *api.UpdateStatus `json:"update,omitempty"`
}

// Server answers GET /status on a unix socket.
type Server struct {
	path string
	ln   net.Listener
	srv  *http.Server
	done chan error
	once sync.Once
}

// Listen creates the socket at path (its directory 0700, the socket 0600,
// replacing a stale socket) and serves snap on it.
func Listen(path string, snap func() Snapshot) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if err := os.Chmod(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("status socket %s: another vigil-host is running", path)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("status socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(snap())
	})
	s := &Server{path: path, ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, done: make(chan error, 1)}
	go func() { s.done <- s.srv.Serve(ln) }()
	return s, nil
}

// Close stops serving and removes the socket. It is idempotent.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		err = s.srv.Shutdown(ctx)
		if serr := <-s.done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
			err = serr
		}
		_ = os.Remove(s.path)
	})
	return err
}

// Fetch reads a snapshot from the socket at path.
func Fetch(ctx context.Context, path string) (Snapshot, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://vigil-host/status", nil)
	if err != nil {
		return Snapshot{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return Snapshot{}, fmt.Errorf("status socket %s: permission denied (run as root)", path)
		}
		return Snapshot{}, fmt.Errorf("status socket %s: %w (is vigil-host running?)", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return Snapshot{}, fmt.Errorf("status: %s: %s", resp.Status, b)
	}
	var s Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return Snapshot{}, fmt.Errorf("status: decoding: %w", err)
	}
	return s, nil
}
