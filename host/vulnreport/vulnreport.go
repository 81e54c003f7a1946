// Package vulnreport sends the host's package inventory to vigil-server,
// digest first. It taps the event pipeline for the vulnscan plugin's
// "inventory_digest" events and posts {host, digest} to the server; only
// when the server answers that it does not store that inventory does it
// run the plugin's "inventory" task and upload the full inventory,
// gzip-compressed and under a size cap. Hosts built from one image share
// one digest, so the server receives each inventory about once.
//
// A server that is down or refuses loses nothing: failures are retried
// with capped exponential backoff and jitter seeded by the host name, the
// next digest event or the periodic refresh sends the digest again, and a
// digest the server already holds costs one small request.
package vulnreport

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/vigil-hids/vigil/host/sink"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/vuln/ingest"
)

// Defaults.
const (
	DefaultRefresh        = 6 * time.Hour
	DefaultFirstCheck     = 2 * time.Minute
	DefaultBackoffInitial = 5 * time.Second
	DefaultBackoffMax     = 10 * time.Minute
	// EventDigest and TaskInventory are vulnscan's event type and task.
	EventDigest   = "inventory_digest"
	TaskInventory = "inventory"
)

// TaskFunc runs the plugin's "inventory" task and returns its JSON.
type TaskFunc func(ctx context.Context) (json.RawMessage, error)

// Config configures a Reporter. Zero durations mean the defaults.
type Config struct {
	// Host is the name reported (the host's registration name).
	Host string
	// URL is the server's API base, e.g. https://vigil:8443.
	URL string
	// Client carries the host's client certificate.
	Client *http.Client
	// Plugin is the vulnscan plugin's name in the host config, whose
	// events are tapped.
	Plugin string
	// Refresh is how often the digest is sent again even without a new
	// event (so a server that lost its store converges); spread by a hash
	// of the host name.
	Refresh time.Duration
	// FirstCheck is when, without any digest event, the task is asked
	// for the digest.
	FirstCheck time.Duration
	// BackoffInitial and BackoffMax bound the retry backoff.
	BackoffInitial, BackoffMax time.Duration
	// MaxUpload caps a compressed upload (0: ingest.DefaultMaxUpload).
	MaxUpload int64
	Log       *slog.Logger
}

// Stats counts what the reporter did.
type Stats struct {
	Digest       string    `json:"digest,omitempty"` // last digest the server acknowledged
	DigestsSent  uint64    `json:"digests_sent"`
	Uploads      uint64    `json:"uploads"`
	UploadBytes  uint64    `json:"upload_bytes"`
	Failures     uint64    `json:"failures"`
	LastError    string    `json:"last_error,omitempty"`
	LastReported time.Time `json:"last_reported"`
}

// Reporter reports one host's inventory. Create it with New, hand Sink to
// the pipeline, then Run it once the plugin supervisor exists.
type Reporter struct {
	cfg  Config
	log  *slog.Logger
	wake chan struct{}
	rng  *rand.Rand
	base time.Duration // this host's offset in the refresh period

	mu     sync.Mutex
	latest string
	stats  Stats
}

// New checks cfg and returns a reporter.
func New(cfg Config) (*Reporter, error) {
	var errs []error
	if cfg.Host == "" {
		errs = append(errs, errors.New("vulnreport: host name is empty"))
	}
	if cfg.URL == "" || cfg.Client == nil {
		errs = append(errs, errors.New("vulnreport: server URL and client are required"))
	}
	if cfg.Plugin == "" {
		errs = append(errs, errors.New("vulnreport: plugin name is empty"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.FirstCheck <= 0 {
		cfg.FirstCheck = DefaultFirstCheck
	}
	if cfg.BackoffInitial <= 0 {
		cfg.BackoffInitial = DefaultBackoffInitial
	}
	if cfg.BackoffMax < cfg.BackoffInitial {
		cfg.BackoffMax = max(DefaultBackoffMax, cfg.BackoffInitial)
	}
	if cfg.MaxUpload <= 0 {
		cfg.MaxUpload = ingest.DefaultMaxUpload
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	cfg.URL = strings.TrimRight(cfg.URL, "/")
	h := fnv.New64a()
	h.Write([]byte(cfg.Host))
	seed := h.Sum64()
	return &Reporter{cfg: cfg, log: cfg.Log.With("component", "vulnreport"), wake: make(chan struct{}, 1),
		rng: rand.New(rand.NewPCG(seed, 0x76756c6e)), base: time.Duration(seed % uint64(cfg.Refresh))}, nil
}

// Observe records a digest from an inventory_digest event and wakes the
// reporter. It never blocks.
func (r *Reporter) Observe(digest string) {
	r.mu.Lock()
	r.latest = digest
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Stats returns the counters.
func (r *Reporter) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// permanent marks a refusal that retrying soon will not fix (4xx).
type permanent struct{ error }

// Run reports until ctx ends: at each digest event, after FirstCheck when
// no event came, and every Refresh; failures are retried with backoff.
func (r *Reporter) Run(ctx context.Context, task TaskFunc) {
	backoff := r.cfg.BackoffInitial
	timer := time.NewTimer(r.cfg.FirstCheck)
	defer timer.Stop()
	acked := ""
	for {
		due := false
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-timer.C:
			due = true
		}
		r.mu.Lock()
		digest := r.latest
		r.mu.Unlock()
		if digest == acked && !due {
			continue // a rescan found the same inventory; the refresh resends it
		}
		done, err := r.report(ctx, digest, task)
		if ctx.Err() != nil {
			return
		}
		var next time.Duration
		var perm permanent
		switch {
		case err == nil:
			acked, backoff = done, r.cfg.BackoffInitial
			next = r.cfg.Refresh/2 + (r.base+time.Duration(r.rng.Int64N(int64(r.cfg.Refresh/10)+1)))%(r.cfg.Refresh/2)
		case errors.As(err, &perm):
			acked, backoff = "", r.cfg.BackoffInitial
			next = r.cfg.Refresh / 2
			r.log.Error("the server refused the inventory; trying again at the next change or refresh", "error", err.Error(), "retry_in", next.String())
		default:
			next = backoff/2 + time.Duration(r.rng.Int64N(int64(backoff/2)+1))
			backoff = min(2*backoff, r.cfg.BackoffMax)
			r.log.Warn("reporting the inventory failed; retrying", "error", err.Error(), "retry_in", next.String())
		}
		r.mu.Lock()
		if err != nil {
			r.stats.Failures++
			r.stats.LastError = err.Error()
		} else {
			r.stats.Digest, r.stats.LastError, r.stats.LastReported = done, "", time.Now()
		}
		r.mu.Unlock()
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

// taskResult is what the inventory task returns, as far as the reporter
// needs it; the inventory itself is passed through unparsed.
type taskResult struct {
	Digest    string          `json:"digest"`
	Kernel    string          `json:"kernel"`
	Inventory json.RawMessage `json:"inventory"`
}

// report sends digest (asking the task for it when it is empty) and, if
// the server does not store it, the full inventory. It returns the digest
// the server now holds for this host.
func (r *Reporter) report(ctx context.Context, digest string, task TaskFunc) (string, error) {
	var res *taskResult
	if digest == "" {
		var err error
		if res, err = r.runTask(ctx, task); err != nil {
			return "", err
		}
		digest = res.Digest
	}
	var ans ingest.DigestAnswer
	body, _ := json.Marshal(ingest.DigestReport{Host: r.cfg.Host, Digest: digest})
	if err := r.post(ctx, "/v1/vuln/digest", body, false, &ans); err != nil {
		return "", err
	}
	r.mu.Lock()
	r.stats.DigestsSent++
	r.mu.Unlock()
	if ans.Known {
		r.log.Debug("the server holds this inventory", "digest", digest)
		return digest, nil
	}
	if res == nil {
		var err error
		if res, err = r.runTask(ctx, task); err != nil {
			return "", err
		}
	}
	if res.Digest != digest {
		// The inventory changed since the event; upload the newer one.
		r.log.Debug("the inventory changed since its digest was sent", "sent", digest, "now", res.Digest)
	}
	up, err := json.Marshal(struct {
		Host      string          `json:"host"`
		Digest    string          `json:"digest"`
		Kernel    string          `json:"kernel,omitempty"`
		Inventory json.RawMessage `json:"inventory"`
	}{r.cfg.Host, res.Digest, res.Kernel, res.Inventory})
	if err != nil {
		return "", fmt.Errorf("vulnreport: encoding the upload: %w", err)
	}
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	_, _ = zw.Write(up)
	if err := zw.Close(); err != nil {
		return "", fmt.Errorf("vulnreport: compressing the upload: %w", err)
	}
	if int64(zb.Len()) > r.cfg.MaxUpload {
		return "", permanent{fmt.Errorf("vulnreport: inventory %s is %d bytes compressed, more than the %d allowed; not sent", res.Digest, zb.Len(), r.cfg.MaxUpload)}
	}
	var ua ingest.UploadAnswer
	if err := r.post(ctx, "/v1/vuln/inventory", zb.Bytes(), true, &ua); err != nil {
		return "", err
	}
	r.mu.Lock()
	r.stats.Uploads++
	r.stats.UploadBytes += uint64(zb.Len())
	r.mu.Unlock()
	r.log.Info("inventory uploaded", "digest", ua.Digest, "packages", ua.Packages, "bytes", zb.Len(), "new", ua.Added)
	return res.Digest, nil
}

func (r *Reporter) runTask(ctx context.Context, task TaskFunc) (*taskResult, error) {
	raw, err := task(ctx)
	if err != nil {
		return nil, fmt.Errorf("vulnreport: inventory task: %w", err)
	}
	var res taskResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("vulnreport: inventory task returned bad JSON: %w", err)
	}
	if res.Digest == "" || len(res.Inventory) == 0 {
		return nil, errors.New("vulnreport: inventory task returned no digest or inventory")
	}
	return &res, nil
}

// post sends body and decodes the JSON answer; a 4xx answer is permanent.
func (r *Reporter) post(ctx context.Context, path string, body []byte, gz bool, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.cfg.URL+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if gz {
		req.Header.Set("Content-Encoding", "gzip")
	}
	resp, err := r.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("vulnreport: POST %s: %w", path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("vulnreport: POST %s: reading the answer: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		err := fmt.Errorf("vulnreport: POST %s: %s: %s", path, resp.Status, msg)
		if resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests &&
			resp.StatusCode != http.StatusRequestTimeout {
			return permanent{err}
		}
		return err
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("vulnreport: POST %s: bad answer: %w", path, err)
	}
	return nil
}

// Sink returns the pipeline tap: a sink that passes over every batch but
// the vulnscan plugin's and reads the digest of its inventory_digest
// events. It never fails a batch.
func (r *Reporter) Sink() sink.Sink { return tap{r} }

type tap struct{ r *Reporter }

func (tap) Name() string                { return "vulnreport" }
func (tap) Flush(context.Context) error { return nil }
func (tap) Close() error                { return nil }
func (t tap) Write(_ context.Context, b *sink.Batch) error {
	if b.Plugin != t.r.cfg.Plugin {
		return nil
	}
	var v sdk.EventView
	for rest := b.Records; len(rest) > 0; {
		rec, next, err := sdk.NextRecord(rest)
		if err != nil {
			return nil // the pipeline checked the records; nothing to report
		}
		rest = next
		if sdk.ParseEvent(rec, &v) != nil || string(v.Type) != EventDigest {
			continue
		}
		for it := v.Fields(); it.Next(); {
			if string(it.Key) == "digest" && it.Kind == sdk.KindString {
				t.r.Observe(string(it.Str))
			}
		}
	}
	return nil
}
