package artifacts

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// DefaultGrace is how old an artifact no manifest names must be before
// Collect removes it (GCOptions.Grace).
const DefaultGrace = time.Hour

// MinGrace is the smallest grace period Collect accepts: publishing stores
// the artifact before it writes the manifest, and a publish in flight must
// not lose its file.
const MinGrace = time.Minute

// GCOptions says what Collect keeps.
type GCOptions struct {
	// Named reports whether a manifest names the artifact sha; Collect
	// never removes those.
	Named func(sha string) bool
	// Grace: an unnamed artifact modified within it is kept; zero means
	// DefaultGrace, less than MinGrace is refused.
	Grace time.Duration
	// Now is the clock the ages are measured against; zero means
	// time.Now().
	Now time.Time
	// DryRun reports what would be removed and removes nothing.
	DryRun bool
}

// Validate checks o without side effects.
func (o GCOptions) Validate() error {
	if o.Named == nil {
		return errors.New("artifacts: gc needs the set of named artifacts")
	}
	if o.Grace != 0 && o.Grace < MinGrace {
		return fmt.Errorf("grace must be at least %s, so a publish in flight keeps its artifact (got %s)", MinGrace, o.Grace)
	}
	return nil
}

// Entry is an artifact as Collect saw it.
type Entry struct {
	SHA256   string    `json:"sha256"`
	Length   int64     `json:"length"`
	Modified time.Time `json:"modified"`
}

// GCReport is what Collect did (or, with DryRun, would do).
type GCReport struct {
	DryRun bool `json:"dry_run"`
	// Grace is the grace period used, as a Go duration ("1h0m0s").
	Grace string `json:"grace"`
	// Removed are the unnamed artifacts older than the grace period
	// (removed, or to be removed with DryRun), by sha256.
	Removed []Entry `json:"removed"`
	// Young are the unnamed artifacts kept because they are younger than
	// the grace period (perhaps a publish in flight).
	Young []Entry `json:"young"`
	// Named counts the artifacts kept because a manifest names them.
	Named int `json:"named"`
	// NamedBytes is their total size.
	NamedBytes int64 `json:"named_bytes"`
	// BytesFreed is the total size of Removed.
	BytesFreed int64 `json:"bytes_freed"`
}

// Collect removes the artifacts that opts.Named does not name and that
// were last modified more than the grace period before opts.Now. Put keeps
// an artifact it reuses while the upload lasts and renews its modification
// time at the end, so an artifact a publish is about to name again is
// kept. Temporary files (uploads in progress) are never touched. One
// Collect runs at a time per Store; two servers sharing one directory are
// not coordinated beyond the grace period.
func (s *Store) Collect(opts GCOptions) (GCReport, error) {
	if err := opts.Validate(); err != nil {
		return GCReport{}, err
	}
	if opts.Grace == 0 {
		opts.Grace = DefaultGrace
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	all, err := s.List()
	if err != nil {
		return GCReport{}, err
	}
	rep := GCReport{DryRun: opts.DryRun, Grace: opts.Grace.String(), Removed: []Entry{}, Young: []Entry{}}
	for _, in := range all {
		if opts.Named(in.SHA256) {
			rep.Named++
			rep.NamedBytes += in.Length
			continue
		}
		e, removed, err := s.collectOne(in.SHA256, opts)
		if err != nil {
			return rep, err
		}
		switch {
		case e.SHA256 == "":
			// removed meanwhile by someone else
		case removed:
			rep.Removed = append(rep.Removed, e)
			rep.BytesFreed += e.Length
		default:
			rep.Young = append(rep.Young, e)
		}
	}
	sort.Slice(rep.Removed, func(i, j int) bool { return rep.Removed[i].SHA256 < rep.Removed[j].SHA256 })
	sort.Slice(rep.Young, func(i, j int) bool { return rep.Young[i].SHA256 < rep.Young[j].SHA256 })
	if n := len(rep.Removed); n > 0 && !opts.DryRun {
		s.log.Info("artifacts collected", "removed", n, "bytes_freed", rep.BytesFreed, "young_kept", len(rep.Young), "named", rep.Named)
	}
	return rep, nil
}

// collectOne checks the age of one unnamed artifact and removes it if it
// is older than the grace period and no upload reusing it is in progress
// (removed true; with DryRun nothing is removed). Under mu, so Put cannot
// reuse it between the check and the removal. e is zero when the file is
// gone already.
func (s *Store) collectOne(sha string, opts GCOptions) (e Entry, removed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.Path(sha)
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, fmt.Errorf("artifacts: %w", err)
	}
	e = Entry{SHA256: sha, Length: fi.Size(), Modified: fi.ModTime().UTC()}
	if s.reusing[sha] > 0 || opts.Now.Sub(fi.ModTime()) < opts.Grace {
		// Young, or an upload reusing it is in progress.
		return e, false, nil
	}
	if opts.DryRun {
		return e, true, nil
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return Entry{}, false, fmt.Errorf("artifacts: removing sha256:%s: %w", sha, err)
	}
	if err := syncDir(filepath.Dir(p)); err != nil {
		return Entry{}, false, fmt.Errorf("artifacts: syncing %s: %w", filepath.Dir(p), err)
	}
	s.log.Info("artifact removed", "sha256", sha, "length", e.Length, "modified", e.Modified)
	return e, true, nil
}

// Digests returns every sha256 (64 lowercase hex digits) that occurs in b:
// the artifacts a manifest that does not parse might name, so a collector
// keeps them all the same.
func Digests(b []byte) []string {
	var out []string
	s := strings.ToLower(string(b))
	run := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			run++
			continue
		}
		if run == 64 {
			out = append(out, s[i-64:i])
		}
		run = 0
	}
	return out
}
