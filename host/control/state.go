package control

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/atomicfile"
)

// Files under Config.StateDir.
const (
	identityFile = "agent.id"
	desiredFile  = "desired.json"
	tasksFile    = "tasks.json"
)

// maxDoneTasks bounds the remembered task IDs; the oldest are forgotten.
const maxDoneTasks = 4096

// persisted is the last good desired state as written to disk.
type persisted struct {
	Revision int64            `json:"revision"`
	SavedAt  time.Time        `json:"saved_at"`
	State    api.DesiredState `json:"state"`
}

// doneTasks is the list of task IDs the host ran, oldest first.
type doneTasks struct {
	Done []string `json:"done"`
}

// loadIdentity returns the agent identity kept in dir, creating it the
// first time. Without a state directory the identity lives as long as the
// process.
func loadIdentity(dir string) (string, error) {
	if dir == "" {
		return randomID(), nil
	}
	path := filepath.Join(dir, identityFile)
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if len(id) >= 16 {
			return id, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("reading agent identity: %w", err)
	}
	id := randomID()
	if err := atomicfile.Write(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("writing agent identity: %w", err)
	}
	return id, nil
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// loadDesired reads the persisted desired state; ok is false when there is
// none.
func loadDesired(dir string) (p persisted, ok bool, err error) {
	if dir == "" {
		return p, false, nil
	}
	b, err := os.ReadFile(filepath.Join(dir, desiredFile))
	if errors.Is(err, fs.ErrNotExist) {
		return p, false, nil
	}
	if err != nil {
		return p, false, fmt.Errorf("reading persisted desired state: %w", err)
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return p, false, fmt.Errorf("decoding persisted desired state %s: %w", filepath.Join(dir, desiredFile), err)
	}
	return p, true, nil
}

func saveDesired(dir string, p persisted) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, desiredFile), b, 0o600); err != nil {
		return fmt.Errorf("persisting desired state: %w", err)
	}
	return nil
}

func loadDone(dir string) ([]string, error) {
	if dir == "" {
		return nil, nil
	}
	b, err := os.ReadFile(filepath.Join(dir, tasksFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading done tasks: %w", err)
	}
	var d doneTasks
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("decoding done tasks %s: %w", filepath.Join(dir, tasksFile), err)
	}
	return d.Done, nil
}

func saveDone(dir string, done []string) error {
	if dir == "" {
		return nil
	}
	b, err := json.Marshal(doneTasks{Done: done})
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, tasksFile), b, 0o600); err != nil {
		return fmt.Errorf("persisting done tasks: %w", err)
	}
	return nil
}
