// Package artifacts is the server's content-addressed store of release
// binaries: one file per sha256 on disk, written through a synced temporary
// file and a rename (so a reader never sees half a binary), refusing content
// whose length or sha256 differs from what the signed manifest says, and
// served with http.ServeContent so hosts resume a download with a range
// request. The store is a mirror: hosts verify every byte against the signed
// manifest themselves, and never trust the server for it.
package artifacts

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// DefaultMaxBytes is the default cap on one artifact (Config.MaxBytes).
const DefaultMaxBytes = 512 << 20

// Refusals, compared with errors.Is.
var (
	// ErrInvalidDigest: the address is not 64 lowercase hex digits.
	ErrInvalidDigest = errors.New("artifacts: invalid sha256")
	// ErrMismatch: the uploaded bytes are not the ones the manifest
	// describes (length or sha256); nothing was stored.
	ErrMismatch = errors.New("artifacts: content does not match the manifest, the binary is not the one that was signed")
	// ErrTooLarge: the artifact is over the store's size cap.
	ErrTooLarge = errors.New("artifacts: artifact too large")
	// ErrNotFound: no artifact has that sha256.
	ErrNotFound = errors.New("artifacts: not found")
)

var hexSHA256 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ValidDigest reports whether s is a sha256 as the store names artifacts:
// 64 lowercase hex digits.
func ValidDigest(s string) bool { return hexSHA256.MatchString(s) }

// Config configures a Store.
type Config struct {
	// Dir holds the artifacts (created 0755 if missing).
	Dir string
	// MaxBytes caps one artifact; zero means DefaultMaxBytes.
	MaxBytes int64
	// Logger; nil discards.
	Logger *slog.Logger
}

// Validate checks c without side effects.
func (c Config) Validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("artifact-dir is required"))
	}
	if c.MaxBytes < 0 {
		errs = append(errs, fmt.Errorf("artifact-max-bytes must be positive (got %d)", c.MaxBytes))
	}
	return errors.Join(errs...)
}

// Store is an artifact directory: Dir/sha256/ab/abcdef… (the first two hex
// digits fan the files out), temporary files under Dir/tmp.
type Store struct {
	dir string
	max int64
	log *slog.Logger
	// mu orders Put's reuse of a stored artifact (which renews its mtime)
	// against Collect's age check and removal of the same file (gc.go).
	mu sync.Mutex
	// reusing counts, by sha256, the uploads in progress that reuse a
	// stored artifact; Collect keeps those files (under mu).
	reusing map[string]int
	// gcMu runs one Collect at a time.
	gcMu sync.Mutex
}

// Open creates the directories if needed and removes temporary files a
// crash left behind.
func Open(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{dir: cfg.Dir, max: cfg.MaxBytes, log: cfg.Logger.With("component", "artifacts"), reusing: map[string]int{}}
	for _, d := range []string{s.dir, filepath.Join(s.dir, "sha256"), s.tmpDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("artifacts: creating %s: %w", d, err)
		}
	}
	left, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return nil, fmt.Errorf("artifacts: reading %s: %w", s.tmpDir(), err)
	}
	for _, e := range left {
		p := filepath.Join(s.tmpDir(), e.Name())
		if err := os.Remove(p); err != nil {
			return nil, fmt.Errorf("artifacts: removing leftover %s: %w", p, err)
		}
		s.log.Info("removed an interrupted upload", "path", p)
	}
	return s, nil
}

// MaxBytes is the cap on one artifact.
func (s *Store) MaxBytes() int64 { return s.max }

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) tmpDir() string { return filepath.Join(s.dir, "tmp") }

// Path is where the artifact sha256 lives (whether or not it exists).
func (s *Store) Path(sha string) string {
	return filepath.Join(s.dir, "sha256", sha[:2], sha)
}

// Info describes a stored artifact.
type Info struct {
	SHA256 string `json:"sha256"`
	Length int64  `json:"length"`
	// Created is false when the artifact was already stored.
	Created bool `json:"created"`
}

// Stat returns the artifact's info, or ErrNotFound.
func (s *Store) Stat(sha string) (Info, error) {
	if !ValidDigest(sha) {
		return Info{}, fmt.Errorf("%w: want 64 lowercase hex digits (got %q)", ErrInvalidDigest, sha)
	}
	fi, err := os.Stat(s.Path(sha))
	if errors.Is(err, os.ErrNotExist) {
		return Info{}, fmt.Errorf("%w: no artifact sha256:%s", ErrNotFound, sha)
	}
	if err != nil {
		return Info{}, fmt.Errorf("artifacts: %w", err)
	}
	return Info{SHA256: sha, Length: fi.Size()}, nil
}

// Put reads exactly length bytes from r (reading at most length+1, so an
// endless or padded stream is cut off) and stores them as sha if their
// sha256 is sha. When that artifact is already stored, r is still read and
// checked (a tampered upload is refused all the same) but not written. On
// any refusal nothing is stored.
func (s *Store) Put(r io.Reader, sha string, length int64) (Info, error) {
	if !ValidDigest(sha) {
		return Info{}, fmt.Errorf("%w: want 64 lowercase hex digits (got %q)", ErrInvalidDigest, sha)
	}
	if length < 1 {
		return Info{}, fmt.Errorf("%w: length must be at least 1 (got %d)", ErrMismatch, length)
	}
	if length > s.max {
		return Info{}, fmt.Errorf("%w: %d bytes, over the cap of %d (artifact-max-bytes)", ErrTooLarge, length, s.max)
	}
	if in, err := s.reuse(sha); err == nil {
		err := func() error {
			if in.Length != length {
				// Two lengths for one sha256 cannot both be right; the stored
				// one was checked when written.
				return fmt.Errorf("%w: sha256:%s is stored with %d bytes, the manifest says %d", ErrMismatch, sha, in.Length, length)
			}
			return check(io.Discard, r, sha, length)
		}()
		if derr := s.reused(sha, err == nil); err == nil {
			err = derr
		}
		if err != nil {
			return Info{}, err
		}
		return in, nil
	}
	tmp, err := os.CreateTemp(s.tmpDir(), sha[:12]+".*")
	if err != nil {
		return Info{}, fmt.Errorf("artifacts: %w", err)
	}
	keep := false
	defer func() {
		if !keep {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := check(tmp, r, sha, length); err != nil {
		return Info{}, err
	}
	if err := errors.Join(tmp.Chmod(0o644), tmp.Sync(), tmp.Close()); err != nil {
		return Info{}, fmt.Errorf("artifacts: writing sha256:%s: %w", sha, err)
	}
	dst := s.Path(sha)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return Info{}, fmt.Errorf("artifacts: %w", err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return Info{}, fmt.Errorf("artifacts: storing sha256:%s: %w", sha, err)
	}
	keep = true
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return Info{}, fmt.Errorf("artifacts: syncing %s: %w", filepath.Dir(dst), err)
	}
	s.log.Info("artifact stored", "sha256", sha, "length", length)
	return Info{SHA256: sha, Length: length, Created: true}, nil
}

// reuse stats a stored artifact, renews its modification time and counts
// it as reused until reused is called: Collect, which removes only unnamed
// artifacts older than its grace period, keeps it however long the upload
// takes, and for the grace period after it, while the manifest naming it
// is written.
func (s *Store) reuse(sha string) (Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, err := s.Stat(sha)
	if err != nil {
		return in, err
	}
	now := time.Now()
	if err := os.Chtimes(s.Path(sha), now, now); err != nil {
		return Info{}, fmt.Errorf("artifacts: renewing sha256:%s: %w", sha, err)
	}
	s.reusing[sha]++
	return in, nil
}

// reused ends an upload that reuse counted; after a good one (ok) the
// modification time is renewed again, so the grace period counts from the
// end of the upload.
func (s *Store) reused(sha string, ok bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reusing[sha]--; s.reusing[sha] <= 0 {
		delete(s.reusing, sha)
	}
	if !ok {
		return nil
	}
	now := time.Now()
	if err := os.Chtimes(s.Path(sha), now, now); err != nil {
		return fmt.Errorf("artifacts: renewing sha256:%s: %w", sha, err)
	}
	return nil
}

// check copies exactly length bytes of r to w and checks their sha256.
func check(w io.Writer, r io.Reader, sha string, length int64) error {
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(r, length+1))
	if err != nil {
		return fmt.Errorf("artifacts: receiving sha256:%s after %d bytes: %w", sha, n, err)
	}
	switch {
	case n < length:
		return fmt.Errorf("%w: truncated, got %d bytes, signed length %d", ErrMismatch, n, length)
	case n > length:
		return fmt.Errorf("%w: longer than the signed length %d", ErrMismatch, length)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		return fmt.Errorf("%w: got sha256:%s, signed sha256:%s", ErrMismatch, got, sha)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// Serve writes the artifact sha with http.ServeContent: HEAD, Range
// (bytes=N- resumes a download), If-Range and If-None-Match against the
// ETag, which is the sha256 itself. A missing artifact is ErrNotFound and
// nothing is written.
func (s *Store) Serve(w http.ResponseWriter, r *http.Request, sha string) error {
	if !ValidDigest(sha) {
		return fmt.Errorf("%w: want 64 lowercase hex digits (got %q)", ErrInvalidDigest, sha)
	}
	f, err := os.Open(s.Path(sha))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: no artifact sha256:%s", ErrNotFound, sha)
	}
	if err != nil {
		return fmt.Errorf("artifacts: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("artifacts: %w", err)
	}
	hd := w.Header()
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("ETag", `"`+sha+`"`)
	hd.Set("Cache-Control", "public, max-age=31536000, immutable")
	hd.Set("X-Content-SHA256", sha)
	http.ServeContent(w, r, "", fi.ModTime(), f)
	return nil
}

// List returns every stored artifact, sorted by sha256.
func (s *Store) List() ([]Info, error) {
	var out []Info
	root := filepath.Join(s.dir, "sha256")
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !ValidDigest(d.Name()) || !strings.HasPrefix(d.Name(), filepath.Base(filepath.Dir(p))) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, Info{SHA256: d.Name(), Length: fi.Size()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("artifacts: listing %s: %w", root, err)
	}
	return out, nil
}
