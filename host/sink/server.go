package sink

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/vigil-hids/vigil/sdk"
)

// ServerConfig configures the sink that sends events to the fleet server's
// ingest API (POST /v1/events). The server's URL and TLS client come from
// the host's server section.
type ServerConfig struct {
	// QueueMB bounds the NDJSON held in memory while the server is slow
	// or down; Write refuses a batch that does not fit.
	QueueMB int `yaml:"queue_mb" json:"queue_mb"`
	// BatchKB is the largest uncompressed body sent in one request.
	BatchKB int `yaml:"batch_kb" json:"batch_kb"`
	// FlushInterval is how often a partial body is sent.
	FlushInterval time.Duration `yaml:"flush_interval" json:"flush_interval"`
}

// Server sink defaults and bounds.
const (
	DefaultServerQueueMB       = 16
	DefaultServerBatchKB       = 512
	DefaultServerFlushInterval = time.Second
	MinServerQueueMB           = 1
	MaxServerQueueMB           = 1024
	MinServerBatchKB           = 16
	MaxServerBatchKB           = 4096
	MinServerFlushInterval     = 10 * time.Millisecond
	MaxServerFlushInterval     = time.Minute

	// serverShutdownFlush bounds the final flush of Close.
	serverShutdownFlush = 2 * time.Second
	// serverRequestTimeout bounds one POST.
	serverRequestTimeout = 30 * time.Second
	serverBackoffInitial = 500 * time.Millisecond
	serverBackoffMax     = 30 * time.Second
)

// Lost reasons of the server sink.
const (
	// LostRejected: the server answered 4xx (other than 429) for the body;
	// sending it again would fail the same way.
	LostRejected = "rejected"
	// LostShutdown: still queued when Close's final flush ran out of time.
	LostShutdown = "shutdown"
)

// ErrQueueFull is returned by the server sink's Write when the batch does
// not fit in the queue: the server is down or slower than the host.
var ErrQueueFull = errors.New("sink server: queue full (the server is unreachable or slower than the host's events)")

// WithDefaults returns c with zero fields set to their defaults.
func (c ServerConfig) WithDefaults() ServerConfig {
	if c.QueueMB == 0 {
		c.QueueMB = DefaultServerQueueMB
	}
	if c.BatchKB == 0 {
		c.BatchKB = DefaultServerBatchKB
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = DefaultServerFlushInterval
	}
	return c
}

// Validate checks c after defaults are applied.
func (c ServerConfig) Validate() error {
	c = c.WithDefaults()
	var errs []error
	if c.QueueMB < MinServerQueueMB || c.QueueMB > MaxServerQueueMB {
		errs = append(errs, fmt.Errorf("sinks.server.queue_mb must be between %d and %d (got %d)", MinServerQueueMB, MaxServerQueueMB, c.QueueMB))
	}
	if c.BatchKB < MinServerBatchKB || c.BatchKB > MaxServerBatchKB {
		errs = append(errs, fmt.Errorf("sinks.server.batch_kb must be between %d and %d (got %d)", MinServerBatchKB, MaxServerBatchKB, c.BatchKB))
	} else if c.BatchKB > c.QueueMB*1024 && c.QueueMB >= MinServerQueueMB {
		errs = append(errs, fmt.Errorf("sinks.server.batch_kb must not exceed queue_mb*1024 (got batch_kb %d, queue_mb %d)", c.BatchKB, c.QueueMB))
	}
	if c.FlushInterval < MinServerFlushInterval || c.FlushInterval > MaxServerFlushInterval {
		errs = append(errs, fmt.Errorf("sinks.server.flush_interval must be between %s and %s (got %s)", MinServerFlushInterval, MaxServerFlushInterval, c.FlushInterval))
	}
	return errors.Join(errs...)
}

// chunk is a run of whole NDJSON lines in the queue.
type chunk struct {
	data   []byte
	events uint64
	// sealed: the sender took it, Write must not append to it.
	sealed bool
}

// Server is the sink that sends events to vigil-server. Write only encodes
// the batch into a bounded in-memory queue and returns, so the pipeline's
// writer (and with it the file sink and the plugins) never waits on the
// network; a background goroutine sends gzip NDJSON bodies, retrying with
// capped exponential backoff and jitter. What happens to accepted events
// afterwards is in Counts.
type Server struct {
	cfg    ServerConfig
	host   string
	url    string
	client *http.Client
	log    *slog.Logger

	// Used by Write only (the pipeline's single writer).
	enc *Encoder
	buf []byte

	mu       sync.Mutex
	queue    []chunk
	queued   int // bytes in queue
	capBytes int
	counts   Counts
	closed   bool

	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	closeMu sync.Once
	// ctx bounds every request; Close cancels it if the sender has not
	// finished serverShutdownFlush after being told to stop.
	ctx    context.Context
	cancel context.CancelFunc
}

// NewServer returns the server sink posting to baseURL (the server
// section's URL) with client (its TLS client), stamping lines with host.
func NewServer(cfg ServerConfig, host string, client *http.Client, baseURL string, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if client == nil {
		return nil, errors.New("sink server: no HTTP client")
	}
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("sink server: server URL must be an http(s) URL with a host (got %q)", baseURL)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.WithDefaults()
	s := &Server{
		cfg: cfg, host: host, client: client, log: log,
		url:      strings.TrimRight(baseURL, "/") + "/v1/events?host=" + url.QueryEscape(host),
		enc:      NewEncoder(host),
		capBytes: cfg.QueueMB << 20,
		counts:   Counts{Lost: map[string]uint64{}},
		kick:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.run()
	return s, nil
}

// Name returns "server".
func (s *Server) Name() string { return "server" }

// Write encodes the batch as NDJSON lines into the queue and returns
// without waiting for the network. When the queue cannot hold the batch it
// returns ErrQueueFull and takes none of it (the pipeline then counts the
// batch as sink_error, for every sink).
func (s *Server) Write(_ context.Context, b *Batch) error {
	s.enc.SetSource(b.Plugin, b.Version)
	buf := s.buf[:0]
	rest := b.Records
	for i := 0; i < b.Count; i++ {
		rec, r, err := sdk.NextRecord(rest)
		if err == nil {
			buf, err = s.enc.AppendLine(buf, rec)
		}
		if err != nil {
			s.buf = buf[:0]
			return fmt.Errorf("sink server: record %d of %d from plugin %q: %w", i, b.Count, b.Plugin, err)
		}
		rest = r
	}
	s.buf = buf[:0]
	if len(buf) == 0 {
		return nil
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if s.queued+len(buf) > s.capBytes {
		s.mu.Unlock()
		return fmt.Errorf("%w: %d bytes queued of %d, batch of %d events from plugin %q refused", ErrQueueFull, s.queued, s.capBytes, b.Count, b.Plugin)
	}
	// Append to the last chunk while it stays under a body's size, so
	// small batches share one allocation and one request.
	limit := s.cfg.BatchKB << 10
	if n := len(s.queue); n > 0 && !s.queue[n-1].sealed && len(s.queue[n-1].data)+len(buf) <= limit {
		c := &s.queue[n-1]
		c.data = append(c.data, buf...)
		c.events += uint64(b.Count)
	} else {
		data := make([]byte, len(buf), max(len(buf), min(limit, 64<<10)))
		copy(data, buf)
		s.queue = append(s.queue, chunk{data: data, events: uint64(b.Count)})
	}
	s.queued += len(buf)
	s.counts.Accepted += uint64(b.Count)
	s.counts.Pending += uint64(b.Count)
	full := s.queued >= limit
	s.mu.Unlock()
	if full {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// Flush does nothing: the sender posts every flush_interval, or sooner once
// a body's worth is queued, and never makes the writer wait.
func (s *Server) Flush(context.Context) error { return nil }

// Close stops taking batches, sends what is queued for at most about two
// seconds (a request in flight included), and counts what is left as lost
// ("shutdown"). It is idempotent.
func (s *Server) Close() error {
	s.closeMu.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.stop)
		t := time.NewTimer(serverShutdownFlush)
		select {
		case <-s.done:
		case <-t.C:
			s.cancel() // a request in flight, or the final flush, ends now
		}
		t.Stop()
		s.cancel()
	})
	<-s.done
	// Its keep-alive connection (and the transport's two goroutines for
	// it) would otherwise stay until the idle timeout.
	s.client.CloseIdleConnections()
	return nil
}

// Counts returns what the sink did with the events Write took.
func (s *Server) Counts() Counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.counts
	c.Lost = maps.Clone(s.counts.Lost)
	return c
}

func (s *Server) run() {
	defer close(s.done)
	ctx := s.ctx
	bo := sdk.NewBackoff(s.host+"/sink/server", serverBackoffInitial, serverBackoffMax)
	tick := time.NewTicker(s.cfg.FlushInterval)
	defer tick.Stop()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	for {
		select {
		case <-s.stop:
			s.shutdown(zw, &gz)
			return
		case <-tick.C:
		case <-s.kick:
		}
		// Send everything queued, a body at a time; on a failure that
		// may pass, wait and try the same body again.
		for {
			c, ok := s.head()
			if !ok {
				break
			}
			retry := s.send(ctx, c, zw, &gz)
			if !retry {
				bo.Reset()
				continue
			}
			t := time.NewTimer(bo.Next())
			select {
			case <-s.stop:
				t.Stop()
				s.shutdown(zw, &gz)
				return
			case <-t.C:
			}
		}
	}
}

// head returns the oldest chunk, ok false if the queue is empty.
func (s *Server) head() (chunk, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return chunk{}, false
	}
	// The chunk leaves Write's reach: a later Write starts a new one.
	s.queue[0].sealed = true
	return s.queue[0], true
}

// pop removes the head chunk and accounts for its events: delivered if
// reason is "", else lost for reason.
func (s *Server) pop(c chunk, reason string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queue[0] = chunk{}
	s.queue = s.queue[1:]
	if len(s.queue) == 0 {
		s.queue = nil
	}
	s.queued -= len(c.data)
	s.counts.Pending -= c.events
	if reason == "" {
		s.counts.Delivered += c.events
	} else {
		s.counts.Lost[reason] += c.events
	}
	if err != nil {
		s.counts.LastError = err.Error()
	}
}

func (s *Server) setError(err error) {
	s.mu.Lock()
	s.counts.LastError = err.Error()
	s.mu.Unlock()
}

// send posts the head chunk and pops it unless the failure may pass
// (network error, 5xx, 429), in which case it returns true.
func (s *Server) send(ctx context.Context, c chunk, zw *gzip.Writer, gz *bytes.Buffer) (retry bool) {
	gz.Reset()
	zw.Reset(gz)
	_, _ = zw.Write(c.data)
	_ = zw.Close()
	body := &sentBody{Reader: bytes.NewReader(gz.Bytes()), closed: make(chan struct{})}
	// The transport may still read the body after Do returns (an early
	// answer): gz is written again only once the transport closed it,
	// which the request's end (cancel, deferred after this) hastens.
	defer body.release(gz)
	rctx, cancel := context.WithTimeout(ctx, serverRequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, s.url, body)
	if err != nil {
		s.pop(c, LostRejected, err)
		return false
	}
	req.ContentLength = int64(gz.Len())
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("Content-Encoding", "gzip")
	resp, err := s.client.Do(req)
	if err != nil {
		s.setError(fmt.Errorf("sink server: posting %d events: %w", c.events, err))
		return true
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	_ = resp.Body.Close()
	switch {
	case resp.StatusCode/100 == 2:
		s.pop(c, "", nil)
		return false
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		s.setError(fmt.Errorf("sink server: posting %d events: %s: %s", c.events, resp.Status, bytes.TrimSpace(msg)))
		return true
	default:
		err := fmt.Errorf("sink server: server refused %d events: %s: %s", c.events, resp.Status, bytes.TrimSpace(msg))
		s.log.Error("server refused events, dropped", "component", "sink", "sink", "server", "events", c.events, "reason", LostRejected, "error", err)
		s.pop(c, LostRejected, err)
		return false
	}
}

// sentBody is a request body that tells when the transport closed it.
type sentBody struct {
	*bytes.Reader
	once   sync.Once
	closed chan struct{}
}

func (b *sentBody) Close() error {
	b.once.Do(func() { close(b.closed) })
	return nil
}

// release waits (briefly: the request's context is done by then) for the
// transport to close the body; if it has not, gz is left to the transport
// and replaced, so the next body is never written under a reader.
func (b *sentBody) release(gz *bytes.Buffer) {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-b.closed:
	case <-t.C:
		*gz = bytes.Buffer{}
	}
}

// shutdown sends what is queued for at most serverShutdownFlush, one
// attempt per body, then counts the rest as lost.
func (s *Server) shutdown(zw *gzip.Writer, gz *bytes.Buffer) {
	ctx, cancel := context.WithTimeout(s.ctx, serverShutdownFlush)
	defer cancel()
	for ctx.Err() == nil {
		c, ok := s.head()
		if !ok {
			return
		}
		if s.send(ctx, c, zw, gz) {
			break
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var n uint64
	for _, c := range s.queue {
		n += c.events
	}
	if n > 0 {
		s.counts.Lost[LostShutdown] += n
		s.counts.Pending -= n
		s.log.Warn("server sink closed with events unsent", "component", "sink", "sink", "server", "events", n, "reason", LostShutdown)
	}
	s.queue, s.queued = nil, 0
}
