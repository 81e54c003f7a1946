package update

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/coreos/go-semver/semver"

	"github.com/vigil-hids/vigil/internal/atomicfile"
)

// stateFile is the installed-releases record under the host's state dir.
const stateFile = "installed.json"

// Binary is one installed release of a plugin.
type Binary struct {
	Version string `json:"version"`
	Path    string `json:"path"`
	SHA256  string `json:"sha256"`
}

// failure is a release that was refused or failed its health gate; it is
// not tried again until the desired version changes.
type failure struct {
	Version string `json:"version"`
	State   string `json:"state"`
	Error   string `json:"error"`
}

// record is what the host knows about one plugin's releases.
type record struct {
	// Current runs (nil: the config file's binary).
	Current *Binary `json:"current,omitempty"`
	// Previous are older installed versions kept for an instant rollback,
	// newest first.
	Previous []Binary `json:"previous,omitempty"`
	// Highest is the highest version ever installed: an older manifest
	// without a signed rollback is a replay.
	Highest string   `json:"highest,omitempty"`
	Failed  *failure `json:"failed,omitempty"`
}

type state struct {
	Plugins map[string]*record `json:"plugins"`
	// KeyringSerial is the highest keyring serial accepted.
	KeyringSerial uint64 `json:"keyring_serial,omitempty"`
}

func loadState(dir string) (state, error) {
	s := state{Plugins: map[string]*record{}}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("reading installed releases: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return state{Plugins: map[string]*record{}}, fmt.Errorf("reading installed releases %s: %w", filepath.Join(dir, stateFile), err)
	}
	if s.Plugins == nil {
		s.Plugins = map[string]*record{}
	}
	for name, r := range s.Plugins {
		if err := r.validate(); err != nil {
			return state{Plugins: map[string]*record{}}, fmt.Errorf("reading installed releases %s: plugin %q: %w", filepath.Join(dir, stateFile), name, err)
		}
	}
	return s, nil
}

func (r *record) validate() error {
	if r == nil {
		return errors.New("empty record")
	}
	bins := append([]Binary(nil), r.Previous...)
	if r.Current != nil {
		bins = append(bins, *r.Current)
	}
	for _, b := range bins {
		if _, err := semver.NewVersion(b.Version); err != nil {
			return fmt.Errorf("version %q is not semver", b.Version)
		}
		if !filepath.IsAbs(b.Path) {
			return fmt.Errorf("path %q is not absolute", b.Path)
		}
		if len(b.SHA256) != 64 || strings.Trim(b.SHA256, "0123456789abcdef") != "" {
			return fmt.Errorf("sha256 %q is not 64 hex digits", b.SHA256)
		}
	}
	if r.Highest != "" {
		if _, err := semver.NewVersion(r.Highest); err != nil {
			return fmt.Errorf("highest %q is not semver", r.Highest)
		}
	}
	return nil
}

func saveState(dir string, s state) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, stateFile), append(b, '\n'), 0o600)
}
