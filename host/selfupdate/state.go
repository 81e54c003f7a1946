package selfupdate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/atomicfile"
)

// maxStateSize bounds the state file; it holds one marker, one result and
// a short list of versions.
const maxStateSize = 1 << 20

// State is the content of .vigil-host.update.json.
type State struct {
	// Trial is the marker: set from just before the swap until the new
	// binary passed its health gate or was rolled back.
	Trial *Trial `json:"trial,omitempty"`
	// Last is the result of the latest self-update, for the registration.
	Last *api.UpdateStatus `json:"last,omitempty"`
	// Failed maps a version that was rolled back to why; it is not tried
	// again (a new version must be published).
	Failed map[string]string `json:"failed,omitempty"`
}

// Trial says which version is on trial and how to go back.
type Trial struct {
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
	// Previous is the version that installed the trial; PreviousPath its
	// kept binary.
	Previous     string    `json:"previous"`
	PreviousPath string    `json:"previous_path"`
	InstalledAt  time.Time `json:"installed_at"`
	// Deadline is when the trial must have passed its health gate.
	Deadline time.Time `json:"deadline"`
	// Starts counts the starts of the trial version; more than one means
	// it crashed or was restarted before passing the gate.
	Starts int `json:"starts"`
}

// ParseState reads a state file strictly: unknown fields, trailing data
// and files over 1 MiB are errors.
func ParseState(r io.Reader) (State, error) {
	var s State
	dec := json.NewDecoder(io.LimitReader(r, maxStateSize+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return State{}, fmt.Errorf("selfupdate: state file: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return State{}, errors.New("selfupdate: state file: trailing data after the JSON value (or over 1 MiB)")
	}
	if t := s.Trial; t != nil {
		var errs []error
		if t.Version == "" {
			errs = append(errs, errors.New("trial.version must be set"))
		}
		if t.PreviousPath == "" {
			errs = append(errs, errors.New("trial.previous_path must be set"))
		}
		if t.Starts < 0 {
			errs = append(errs, fmt.Errorf("trial.starts must be at least 0 (got %d)", t.Starts))
		}
		if err := errors.Join(errs...); err != nil {
			return State{}, fmt.Errorf("selfupdate: state file: %w", err)
		}
	}
	return s, nil
}

// readState reads path; a missing file is an empty state.
func readState(path string) (State, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return State{}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("selfupdate: reading state: %w", err)
	}
	defer f.Close()
	s, err := ParseState(f)
	if err != nil {
		return State{}, fmt.Errorf("%w (%s)", err, path)
	}
	return s, nil
}

// writeState replaces path atomically and durably: temporary file, fsync,
// rename, fsync of the directory.
func writeState(path string, s State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("selfupdate: encoding state: %w", err)
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("selfupdate: writing state: %w", err)
	}
	return nil
}

// syncDir makes the directory entries (renames, links) in dir durable.
func syncDir(dir string) error {
	if err := atomicfile.SyncDir(dir); err != nil {
		return fmt.Errorf("selfupdate: syncing %s: %w", dir, err)
	}
	return nil
}
