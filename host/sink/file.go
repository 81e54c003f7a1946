package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/vigil-hids/vigil/sdk"
)

// FileConfig configures the NDJSON file sink.
type FileConfig struct {
	// Path of the live file; the one backup sits beside it with a
	// timestamp in its name.
	Path string `yaml:"path" json:"path"`
	// MaxSizeMB is the size of each of the two files, in MiB.
	MaxSizeMB int `yaml:"max_size_mb" json:"max_size_mb"`
}

// File sink defaults. The original design keeps logs in two files of a
// fixed size ("20M, 50M") written in turn so they never fill the disk.
const (
	DefaultFilePath      = "/var/log/vigil/events.ndjson"
	DefaultFileMaxSizeMB = 50
	MinFileMaxSizeMB     = 1
	MaxFileMaxSizeMB     = 4096
)

// WithDefaults returns c with zero fields set to their defaults.
func (c FileConfig) WithDefaults() FileConfig {
	if c.Path == "" {
		c.Path = DefaultFilePath
	}
	if c.MaxSizeMB == 0 {
		c.MaxSizeMB = DefaultFileMaxSizeMB
	}
	return c
}

// Validate checks c after defaults are applied.
func (c FileConfig) Validate() error {
	c = c.WithDefaults()
	var errs []error
	if c.MaxSizeMB < MinFileMaxSizeMB || c.MaxSizeMB > MaxFileMaxSizeMB {
		errs = append(errs, fmt.Errorf("sink.file.max_size_mb must be between %d and %d (got %d)", MinFileMaxSizeMB, MaxFileMaxSizeMB, c.MaxSizeMB))
	}
	return errors.Join(errs...)
}

// chunkBytes bounds how much NDJSON is built before it is written, so a
// batch of large events is written in pieces of whole lines instead of one
// write bigger than a file.
const chunkBytes = 256 << 10

// Writer is a sink that writes NDJSON lines to an io.Writer. Each batch is
// built in a reused buffer and written in as few writes as possible.
type Writer struct {
	name   string
	w      io.Writer
	closer io.Closer
	enc    *Encoder
	buf    []byte
	closed bool
}

// NewWriter returns an NDJSON sink named name writing to w. If w is an
// io.Closer, Close closes it.
func NewWriter(name string, w io.Writer, host string) *Writer {
	s := &Writer{name: name, w: w, enc: NewEncoder(host), buf: make([]byte, 0, chunkBytes+64<<10)}
	if c, ok := w.(io.Closer); ok {
		s.closer = c
	}
	return s
}

// NewStdout returns the NDJSON sink writing to the process's stdout; it
// does not close stdout.
func NewStdout(host string) *Writer { return NewWriter("stdout", nopCloser{os.Stdout}, host) }

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// NewFile returns the NDJSON sink writing to cfg.Path, rotated as exactly
// two files of cfg.MaxSizeMB: when the live file would grow past the size
// it is renamed to a timestamped backup, the older backup is removed, and a
// new live file is started.
func NewFile(cfg FileConfig, host string) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	lj := &lumberjack.Logger{
		Filename:   cfg.Path,
		MaxSize:    cfg.MaxSizeMB,
		MaxBackups: 1,
	}
	return NewWriter("file", lj, host), nil
}

// Name returns the sink's name.
func (s *Writer) Name() string { return s.name }

// Write encodes the batch as NDJSON and writes it, in chunks of whole lines
// when it is large. A record that does not decode stops the batch with an
// error wrapping sdk.ErrMalformedEvent (the pipeline checks records before
// they reach a sink, so this means a bug, not a bad plugin).
func (s *Writer) Write(_ context.Context, b *Batch) error {
	if s.closed {
		return ErrClosed
	}
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
			return fmt.Errorf("sink %s: record %d of %d from plugin %q: %w", s.name, i, b.Count, b.Plugin, err)
		}
		rest = r
		if len(buf) >= chunkBytes {
			if _, err := s.w.Write(buf); err != nil {
				s.buf = buf[:0]
				return fmt.Errorf("sink %s: writing: %w", s.name, err)
			}
			buf = buf[:0]
		}
	}
	s.buf = buf[:0]
	if len(buf) == 0 {
		return nil
	}
	if _, err := s.w.Write(buf); err != nil {
		return fmt.Errorf("sink %s: writing: %w", s.name, err)
	}
	return nil
}

// Flush does nothing: every Write reaches the file before it returns.
func (s *Writer) Flush(context.Context) error { return nil }

// Close closes the underlying writer if it is a Closer. It is idempotent.
func (s *Writer) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	if s.closer != nil {
		if err := s.closer.Close(); err != nil {
			return fmt.Errorf("sink %s: closing: %w", s.name, err)
		}
	}
	return nil
}
