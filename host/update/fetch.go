package update

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-hids/vigil/signing"
)

// Refusals and failures of the install pipeline, besides signing's own
// sentinels (which Fetch and Install return wrapped).
var (
	// ErrDownload: the artifact could not be downloaded (server error,
	// timeout, stalled or cut transfers beyond the attempts).
	ErrDownload = errors.New("update: download failed")
	// ErrReplay: the manifest is older than a version this host already
	// installed and carries no signed rollback.
	ErrReplay = errors.New("update: manifest older than a version already installed, a manifest replayed from an old etcd revision must not install")
	// ErrKeyMismatch: the manifest read at /hids/releases/{plugin}/{version}/{os}/{arch}
	// names another plugin or version than its key.
	ErrKeyMismatch = errors.New("update: manifest does not match the release key it was read from")
	// ErrHealth: the new version did not pass the health gate.
	ErrHealth = errors.New("update: new version failed the health gate")
)

// Source is where release binaries are downloaded from: vigil-server's
// content-addressed artifact store, GET {BaseURL}/v1/artifacts/{sha256}
// with range requests. The server is an untrusted mirror: what it sends is
// capped at the signed length (+1 byte to see an oversize) and checked
// against the signed sha256.
type Source struct {
	// Client is the HTTP client (config.Server.HTTPClient(0)); nil means
	// http.DefaultClient.
	Client *http.Client
	// BaseURL is the server's URL (server.url).
	BaseURL string
	// RequestTimeout bounds each HTTP request, body included; default 5m.
	RequestTimeout time.Duration
	// StallTimeout cuts a request that receives no byte for this long;
	// default 30s.
	StallTimeout time.Duration
	// Attempts is how many requests a download may take (the first and
	// the resumptions after a cut); default 5.
	Attempts int
	// RetryDelay is the pause before a resumption, doubled each time;
	// default 1s.
	RetryDelay time.Duration
}

// Source defaults.
const (
	DefaultRequestTimeout = 5 * time.Minute
	DefaultStallTimeout   = 30 * time.Second
	DefaultAttempts       = 5
	DefaultRetryDelay     = time.Second
)

func (s Source) withDefaults() Source {
	if s.Client == nil {
		s.Client = http.DefaultClient
	}
	if s.RequestTimeout <= 0 {
		s.RequestTimeout = DefaultRequestTimeout
	}
	if s.StallTimeout <= 0 {
		s.StallTimeout = DefaultStallTimeout
	}
	if s.Attempts <= 0 {
		s.Attempts = DefaultAttempts
	}
	if s.RetryDelay <= 0 {
		s.RetryDelay = DefaultRetryDelay
	}
	return s
}

// ArtifactURL is where the binary with this sha256 is served.
func (s Source) ArtifactURL(sha256 string) string {
	return strings.TrimRight(s.BaseURL, "/") + "/v1/artifacts/" + sha256
}

// Request is one release to fetch.
type Request struct {
	// Manifest is the signed manifest as read (the etcd value of
	// /hids/releases/{name}/{version}/{os}/{arch}).
	Manifest []byte
	// Trust decides whose signatures count.
	Trust Trust
	// Expect is what this host runs and wants; fill every field (Now,
	// Plugin, OS, Arch, Running, HostVersion): empty fields are not
	// checked.
	Expect signing.Expect
	// Source serves the binary.
	Source Source
	// Dir receives the temporary file; put it on the filesystem of the
	// final location so the rename is atomic.
	Dir string
}

// Fetch verifies the manifest (signatures by a threshold of distinct
// trusted keys, expiry, plugin, platform, version, minimum host version)
// before anything is downloaded, then downloads the binary into a
// temporary file in r.Dir (capped at the signed length + 1 byte, each
// request bounded by a timeout and a stall timeout, resumed with a Range
// request after a cut) and checks its length and sha256. The returned file
// is complete, verified, fsynced and mode 0755; the caller renames it into
// place or removes it. On error nothing is left behind.
func Fetch(ctx context.Context, r Request) (path string, v signing.Verified, err error) {
	v, err = VerifyManifest(r.Manifest, r.Trust, r.Expect)
	if err != nil {
		return "", signing.Verified{}, err
	}
	path, err = Download(ctx, r.Source, v.Manifest, r.Dir)
	if err != nil {
		return "", signing.Verified{}, err
	}
	return path, v, nil
}

// VerifyManifest parses a signed manifest and verifies it with trust
// against want.
func VerifyManifest(raw []byte, trust Trust, want signing.Expect) (signing.Verified, error) {
	s, err := signing.ParseManifest(strings.NewReader(string(raw)))
	if err != nil {
		return signing.Verified{}, fmt.Errorf("reading release manifest: %w", err)
	}
	t, err := trust.Release(want.Now, want.MinKeyringSerial)
	if err != nil {
		return signing.Verified{}, err
	}
	return signing.VerifyManifest(s, t, want)
}

// Download fetches the binary m describes into a temporary file in dir and
// checks its length and sha256 (see Fetch). m must come from a verified
// manifest.
func Download(ctx context.Context, src Source, m signing.Manifest, dir string) (string, error) {
	src = src.withDefaults()
	f, err := os.CreateTemp(dir, ".download-"+m.Plugin+"-"+m.Version+"-*")
	if err != nil {
		return "", fmt.Errorf("downloading %s %s: %w", m.Plugin, m.Version, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := download(ctx, src, m, f); err != nil {
		return "", err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	if err := signing.VerifyBinary(m, f); err != nil {
		return "", err
	}
	if err := f.Chmod(0o755); err != nil {
		return "", fmt.Errorf("downloading %s %s: %w", m.Plugin, m.Version, err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("downloading %s %s: fsync: %w", m.Plugin, m.Version, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("downloading %s %s: %w", m.Plugin, m.Version, err)
	}
	ok = true
	return f.Name(), nil
}

// errFatal marks a download error that another attempt cannot fix.
type errFatal struct{ error }

func (e errFatal) Unwrap() error { return e.error }

// download writes the artifact into f, resuming after cuts.
func download(ctx context.Context, src Source, m signing.Manifest, f *os.File) error {
	url := src.ArtifactURL(m.SHA256)
	release := m.Plugin + " " + m.Version
	var have int64
	delay := src.RetryDelay
	var last error
	for attempt := 1; attempt <= src.Attempts; attempt++ {
		if attempt > 1 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("downloading %s: %w", release, ctx.Err())
			case <-time.After(delay):
			}
			delay *= 2
		}
		n, err := fetchOnce(ctx, src, url, m.Length, have, f)
		have = n
		if err == nil {
			if have == m.Length {
				return nil
			}
			// The body ended early without an error: a cut.
			err = fmt.Errorf("transfer ended at byte %d of %d", have, m.Length)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("downloading %s: %w", release, ctx.Err())
		}
		var fatal errFatal
		if errors.As(err, &fatal) {
			return fmt.Errorf("downloading %s from %s refused: %w", release, url, fatal.error)
		}
		last = err
	}
	if have < m.Length && have > 0 && last != nil {
		return fmt.Errorf("downloading %s from %s: %w after %d attempts: %w: truncated at byte %d of %d; last: %v",
			release, url, ErrDownload, src.Attempts, signing.ErrLengthMismatch, have, m.Length, last)
	}
	return fmt.Errorf("downloading %s from %s: %w after %d attempts: %v", release, url, ErrDownload, src.Attempts, last)
}

// fetchOnce makes one request for the bytes from have on and appends them
// to f; it returns how many bytes f holds afterwards.
func fetchOnce(ctx context.Context, src Source, url string, length, have int64, f *os.File) (int64, error) {
	rctx, cancel := context.WithTimeout(ctx, src.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		return have, errFatal{err}
	}
	if have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
	}
	stall := time.AfterFunc(src.StallTimeout, cancel)
	defer stall.Stop()
	resp, err := src.Client.Do(req)
	if err != nil {
		return have, stalled(err, rctx, src)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		start, ok := rangeStart(resp.Header.Get("Content-Range"))
		if !ok || start != have {
			// Not the range asked for: start over without one.
			return restart(f, fmt.Errorf("server answered range %q to a request from byte %d", resp.Header.Get("Content-Range"), have))
		}
	case resp.StatusCode == http.StatusOK:
		if have > 0 {
			// The server ignored the range: take the whole body again.
			if _, err := restart(f, nil); err != nil {
				return 0, err
			}
			have = 0
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && have > 0:
		return restart(f, fmt.Errorf("server refused range from byte %d", have))
	case resp.StatusCode == http.StatusNotFound:
		return have, errFatal{fmt.Errorf("%w: artifact not found (HTTP 404)", ErrDownload)}
	case resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusRequestTimeout:
		return have, errFatal{fmt.Errorf("%w: HTTP %s", ErrDownload, resp.Status)}
	default:
		return have, fmt.Errorf("HTTP %s", resp.Status)
	}
	// Read at most one byte past the signed length: an endless or padded
	// stream is cut off and refused.
	w := &stallWriter{f: f, stall: stall, d: src.StallTimeout}
	n, err := io.Copy(w, io.LimitReader(resp.Body, length+1-have))
	have += n
	if have > length {
		return have, errFatal{fmt.Errorf("%w: longer than the signed length %d", signing.ErrLengthMismatch, length)}
	}
	if err != nil {
		if w.err != nil {
			return have, errFatal{w.err}
		}
		return have, stalled(err, rctx, src)
	}
	return have, nil
}

// stallWriter writes to f and pushes the stall deadline back on progress.
type stallWriter struct {
	f     *os.File
	stall *time.Timer
	d     time.Duration
	err   error
}

func (w *stallWriter) Write(p []byte) (int, error) {
	w.stall.Reset(w.d)
	n, err := w.f.Write(p)
	if err != nil {
		w.err = fmt.Errorf("writing the download: %w", err)
	}
	return n, err
}

func stalled(err error, rctx context.Context, src Source) error {
	if errors.Is(rctx.Err(), context.Canceled) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("no data for %s, request cut: %w", src.StallTimeout, err)
	}
	if errors.Is(rctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("request took longer than %s: %w", src.RequestTimeout, err)
	}
	return err
}

// restart empties f so the next attempt starts from byte 0.
func restart(f *os.File, why error) (int64, error) {
	if err := f.Truncate(0); err != nil {
		return 0, errFatal{err}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, errFatal{err}
	}
	if why == nil {
		return 0, nil
	}
	return 0, why
}

// rangeStart parses the first byte of "bytes START-END/TOTAL".
func rangeStart(cr string) (int64, bool) {
	rest, ok := strings.CutPrefix(cr, "bytes ")
	if !ok {
		return 0, false
	}
	first, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(first, 10, 64)
	return n, err == nil && n >= 0
}

// tempDirFor makes sure dir exists for temporary downloads.
func tempDirFor(dir string) error {
	return os.MkdirAll(filepath.Clean(dir), 0o755)
}
