package httpapi

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/vigil-hids/vigil/server/auth"
	"github.com/vigil-hids/vigil/server/metrics"
)

// Event ingest limits.
const (
	// DefaultEventsMaxBody bounds a POST /v1/events body as sent (gzip).
	DefaultEventsMaxBody = 8 << 20
	// DefaultEventsMaxDecoded bounds it decompressed.
	DefaultEventsMaxDecoded = 64 << 20
	// DefaultEventsMaxInFlight bounds the decoded bytes held by all the
	// bodies being taken in at once (their buffers may be up to twice
	// that).
	DefaultEventsMaxInFlight = 256 << 20
	// DefaultEventsBodyTimeout bounds reading a body (8 MiB at about
	// 0.5 Mbit/s; the host's server sink gives up on a request after 30 s).
	DefaultEventsBodyTimeout = 2 * time.Minute
	// SharedHostIdentity is the common name of the fleet-wide host
	// certificate that init creates (pki.DefaultIdentities): it binds no
	// host name, so the host is the one the request names.
	SharedHostIdentity = "vigil-host"
)

// EventsOptions configures POST /v1/events.
type EventsOptions struct {
	// Out receives the accepted NDJSON lines (a rotated file); nil
	// answers 404 ("disabled"): the server keeps no events, and a host's
	// server sink counts what it sends as lost (rejected) instead of
	// retrying it until its queue is full.
	Out io.Writer
	// MaxBody and MaxDecoded bound a body compressed and decompressed;
	// 0 means the defaults.
	MaxBody, MaxDecoded int64
	// Metrics counts events, bytes and refusals; nil counts nothing.
	Metrics *metrics.Events
	// BodyTimeout bounds reading a body, from the end of its headers
	// (0: DefaultEventsBodyTimeout).
	BodyTimeout time.Duration
	// MaxInFlight bounds the decoded bytes of all the bodies being read,
	// checked and written at once (0: DefaultEventsMaxInFlight; at least
	// MaxDecoded).
	MaxInFlight int64
}

// eventsState holds the events file's writer lock, the body buffers and
// the decoded bytes they hold.
type eventsState struct {
	mu       sync.Mutex
	buf      sync.Pool
	inFlight budget
}

// eventsRoutes adds POST /v1/events (always: without Out it answers 404).
func (h *handler) eventsRoutes() {
	if h.opts.Events == nil {
		h.opts.Events = &EventsOptions{}
	}
	e := h.opts.Events
	if e.MaxBody <= 0 {
		e.MaxBody = DefaultEventsMaxBody
	}
	if e.MaxDecoded <= 0 {
		e.MaxDecoded = DefaultEventsMaxDecoded
	}
	if e.BodyTimeout <= 0 {
		e.BodyTimeout = DefaultEventsBodyTimeout
	}
	if e.MaxInFlight <= 0 {
		e.MaxInFlight = DefaultEventsMaxInFlight
	}
	e.MaxInFlight = max(e.MaxInFlight, e.MaxDecoded+1)
	h.events = &eventsState{buf: sync.Pool{New: func() any { return new(bytes.Buffer) }}}
	h.events.inFlight.max = e.MaxInFlight
	h.mux.HandleFunc("POST /v1/events", h.postEvents)
}

var errTooLarge = errors.New("httpapi: too large")

// eventsHost returns the host the caller may write events as: the
// certificate's common name, or for the shared fleet host certificate the
// ?host= parameter.
func eventsHost(r *http.Request) (string, error) {
	id, _ := auth.From(r.Context())
	if id.Role != auth.Host {
		return "", fmt.Errorf("%w: role %q (%s) may not post events: only hosts do", auth.ErrForbidden, id.Role, id.Name)
	}
	q := r.URL.Query().Get("host")
	if id.Name == SharedHostIdentity {
		if q == "" {
			return "", badRequest("the host parameter must name the posting host (the shared host certificate %q binds no host name)", id.Name)
		}
		return q, nil
	}
	if q != "" && q != id.Name {
		return "", fmt.Errorf("%w: certificate of host %q may not post events as host %q", auth.ErrForbidden, id.Name, q)
	}
	return id.Name, nil
}

func (h *handler) refuseEvents(w http.ResponseWriter, r *http.Request, reason string, err error) {
	if m := h.opts.Events.Metrics; m != nil {
		m.Refused.WithLabelValues(reason).Inc()
	}
	switch reason {
	case "too_large":
		h.refuse(w, r, http.StatusRequestEntityTooLarge, "too_large", err)
	case "disabled":
		h.refuse(w, r, http.StatusNotFound, "disabled", err)
	case "timeout":
		h.refuse(w, r, http.StatusRequestTimeout, "timeout", err)
	case "busy":
		h.refuse(w, r, http.StatusServiceUnavailable, "busy", err)
	case "write":
		h.refuse(w, r, http.StatusServiceUnavailable, "unavailable", err)
	default:
		h.fail(w, r, err)
	}
}

func (h *handler) postEvents(w http.ResponseWriter, r *http.Request) {
	e := h.opts.Events
	// The server has no read timeout (other routes take large uploads):
	// a host that stalls its body must not hold this handler forever.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(e.BodyTimeout))
	host, err := eventsHost(r)
	if err != nil {
		reason := "forbidden"
		if errors.Is(err, errBadRequest) {
			reason = "invalid"
		}
		h.refuseEvents(w, r, reason, err)
		return
	}
	if e.Out == nil {
		h.refuseEvents(w, r, "disabled", errors.New("this server keeps no events (no --data-dir, or --no-events)"))
		return
	}
	var body io.Reader = http.MaxBytesReader(w, r.Body, e.MaxBody)
	switch enc := strings.ToLower(r.Header.Get("Content-Encoding")); enc {
	case "gzip":
		zr, err := gzip.NewReader(body)
		if err != nil {
			if isMaxBytes(err) {
				h.refuseEvents(w, r, "too_large", fmt.Errorf("%w: body is larger than %d bytes", errTooLarge, e.MaxBody))
			} else if errors.Is(err, os.ErrDeadlineExceeded) {
				h.refuseEvents(w, r, "timeout", fmt.Errorf("body not received within %s", e.BodyTimeout))
			} else {
				h.refuseEvents(w, r, "invalid", badRequest("body is not gzip: %v", err))
			}
			return
		}
		defer zr.Close()
		body = zr
	case "", "identity":
	default:
		h.refuseEvents(w, r, "invalid", badRequest("Content-Encoding %q is not supported (gzip or none)", enc))
		return
	}
	buf := h.events.buf.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= 16<<20 {
			h.events.buf.Put(buf)
		}
	}()
	br := h.events.inFlight.reader(io.LimitReader(body, e.MaxDecoded+1))
	defer br.release()
	_, err = buf.ReadFrom(br)
	switch {
	case errors.Is(err, errBusy):
		h.refuseEvents(w, r, "busy", fmt.Errorf("server busy: %d MiB of event bodies are being taken in; send this one again later", e.MaxInFlight>>20))
		return
	case isMaxBytes(err):
		h.refuseEvents(w, r, "too_large", fmt.Errorf("%w: body is larger than %d bytes", errTooLarge, e.MaxBody))
		return
	case errors.Is(err, os.ErrDeadlineExceeded):
		h.refuseEvents(w, r, "timeout", fmt.Errorf("body not received within %s", e.BodyTimeout))
		return
	case err != nil:
		h.refuseEvents(w, r, "invalid", badRequest("reading the body: %v", err))
		return
	case int64(buf.Len()) > e.MaxDecoded:
		h.refuseEvents(w, r, "too_large", fmt.Errorf("%w: body is larger than %d bytes decompressed", errTooLarge, e.MaxDecoded))
		return
	}
	// The body is in: the deadline must not expire on the server's
	// background read while this waits for the events file (that would
	// cancel the connection's context).
	_ = rc.SetReadDeadline(time.Time{})
	data := buf.Bytes()
	n, err := CheckEvents(data, host)
	if err != nil {
		h.refuseEvents(w, r, "invalid", err)
		return
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		buf.WriteByte('\n')
		data = buf.Bytes()
	}
	h.events.mu.Lock()
	_, err = writeLines(e.Out, data)
	h.events.mu.Unlock()
	if err != nil {
		h.opts.Logger.Error("writing events failed", "component", "httpapi", "host", host, "events", n, "error", err.Error())
		h.refuseEvents(w, r, "write", fmt.Errorf("writing events: %v", err))
		return
	}
	if m := e.Metrics; m != nil {
		m.Received.Add(float64(n))
		m.Bytes.Add(float64(len(data)))
	}
	writeJSON(w, http.StatusOK, map[string]int{"accepted": n})
}

func isMaxBytes(err error) bool {
	var mbe *http.MaxBytesError
	return err != nil && (errors.As(err, &mbe) || strings.Contains(err.Error(), "request body too large"))
}

// writeChunk bounds one write to the events file, in whole lines, so a
// rotating writer never sees a write larger than a file.
const writeChunk = 1 << 20

func writeLines(w io.Writer, data []byte) (int, error) {
	total := 0
	for len(data) > 0 {
		end := len(data)
		if end > writeChunk {
			if i := bytes.LastIndexByte(data[:writeChunk], '\n'); i >= 0 {
				end = i + 1
			} else if i := bytes.IndexByte(data, '\n'); i >= 0 {
				end = i + 1
			}
		}
		n, err := w.Write(data[:end])
		total += n
		if err != nil {
			return total, err
		}
		data = data[end:]
	}
	return total, nil
}

// CheckEvents checks an NDJSON body: every non-empty line must be a JSON
// object whose "host" field is the string host. It returns the number of
// lines, or an error naming the first bad line (counted from 1).
func CheckEvents(data []byte, host string) (int, error) {
	n, line := 0, 0
	var ev struct {
		Host *string `json:"host"`
	}
	for len(data) > 0 {
		line++
		l := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			l, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		l = bytes.TrimRight(l, "\r")
		if len(bytes.TrimSpace(l)) == 0 {
			continue
		}
		if t := bytes.TrimLeft(l, " \t"); t[0] != '{' {
			return n, badRequest("line %d: not a JSON object", line)
		}
		// encoding/json reads invalid UTF-8 as U+FFFD; the line is kept
		// as sent, and other readers refuse it.
		if !utf8.Valid(l) {
			return n, badRequest("line %d: not valid UTF-8 (JSON text must be)", line)
		}
		ev.Host = nil
		if err := json.Unmarshal(l, &ev); err != nil {
			return n, badRequest("line %d: not a JSON object: %v", line, err)
		}
		// encoding/json matches keys case-insensitively and keeps the
		// last of duplicates; other readers of the file may not, so the
		// host must be under "host", once, with no case variant beside it.
		if err := checkHostKey(l); err != nil {
			return n, badRequest("line %d: %v", line, err)
		}
		switch {
		case ev.Host == nil:
			return n, badRequest("line %d: no \"host\" field (want %q)", line, host)
		case *ev.Host != host:
			return n, badRequest("line %d: host %q is not the posting host %q (a host writes only its own events)", line, *ev.Host, host)
		}
		n++
	}
	return n, nil
}

// checkHostKey checks the top-level keys of l, a valid JSON object: "host"
// at most once, and no key that equals it case-insensitively (as
// encoding/json would match it) but for "host" itself.
func checkHostKey(l []byte) error {
	depth, seen := 0, false
	prev := byte(0) // the last byte outside strings that is not a space
	for i := 0; i < len(l); i++ {
		switch c := l[i]; c {
		case '{', '[':
			depth++
		case '}', ']':
			depth--
		case '"':
			start := i
			for i++; l[i] != '"'; i++ {
				if l[i] == '\\' {
					i++
				}
			}
			if depth != 1 || (prev != '{' && prev != ',') {
				break // a value, or nested
			}
			raw := l[start : i+1]
			key := raw[1 : len(raw)-1]
			if bytes.ContainsAny(key, "\\") || !isASCII(key) {
				var k string
				if err := json.Unmarshal(raw, &k); err != nil {
					return err
				}
				key = []byte(k)
			}
			switch {
			case string(key) == "host":
				if seen {
					return errors.New(`"host" appears twice`)
				}
				seen = true
			case bytes.EqualFold(key, []byte("host")):
				return fmt.Errorf("key %q is a case variant of \"host\"", key)
			}
		}
		if c := l[i]; c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			prev = c
		}
	}
	return nil
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}
