package logging

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"strings"
	"sync"

	hclog "github.com/hashicorp/go-hclog"
)

// HCLog returns an hclog.Logger that writes to l with plugin (unless it is
// empty) as the "plugin" field: give it to go-plugin's ClientConfig.Logger, and the
// lines a plugin writes to stderr (which go-plugin parses and relays)
// appear in the host log at their own level. go-plugin's name for the
// logger (the binary's base name) appears as "logger". hclog's Trace is
// written as debug, syslog's least severe level.
func HCLog(l *slog.Logger, plugin string) hclog.Logger {
	base := l
	if plugin != "" {
		base = l.With("plugin", plugin)
	}
	return &hcAdapter{base: base, out: base, min: new(levelBox)}
}

type levelBox struct {
	mu sync.Mutex
	l  hclog.Level
}

type hcAdapter struct {
	base    *slog.Logger // with implied args, without the name
	out     *slog.Logger // base plus the name
	name    string
	implied []any
	min     *levelBox // an extra floor set by SetLevel; NoLevel follows l
}

var _ hclog.Logger = (*hcAdapter)(nil)

func toSlog(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace, hclog.Debug:
		// syslog has nothing below debug.
		return LevelDebug
	case hclog.Info, hclog.NoLevel, hclog.DefaultLevel:
		return LevelInfo
	case hclog.Warn:
		return LevelWarning
	default:
		return LevelError
	}
}

func (a *hcAdapter) enabled(l hclog.Level) bool {
	if l == hclog.Off {
		return false
	}
	a.min.mu.Lock()
	floor := a.min.l
	a.min.mu.Unlock()
	if floor != hclog.NoLevel && l < floor {
		return false
	}
	return a.out.Enabled(context.Background(), toSlog(l))
}

func (a *hcAdapter) Log(level hclog.Level, msg string, args ...any) {
	if a.enabled(level) {
		a.out.Log(context.Background(), toSlog(level), msg, args...)
	}
}

func (a *hcAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hcAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hcAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hcAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hcAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

func (a *hcAdapter) IsTrace() bool { return a.enabled(hclog.Trace) }
func (a *hcAdapter) IsDebug() bool { return a.enabled(hclog.Debug) }
func (a *hcAdapter) IsInfo() bool  { return a.enabled(hclog.Info) }
func (a *hcAdapter) IsWarn() bool  { return a.enabled(hclog.Warn) }
func (a *hcAdapter) IsError() bool { return a.enabled(hclog.Error) }

func (a *hcAdapter) ImpliedArgs() []any { return a.implied }

func (a *hcAdapter) With(args ...any) hclog.Logger {
	b := *a
	b.base = a.base.With(args...)
	b.implied = append(append([]any(nil), a.implied...), args...)
	b.out = b.named()
	return &b
}

func (a *hcAdapter) named() *slog.Logger {
	if a.name == "" {
		return a.base
	}
	return a.base.With("logger", a.name)
}

func (a *hcAdapter) Name() string { return a.name }

func (a *hcAdapter) Named(name string) hclog.Logger {
	if a.name != "" {
		name = a.name + "." + name
	}
	return a.ResetNamed(name)
}

func (a *hcAdapter) ResetNamed(name string) hclog.Logger {
	b := *a
	b.name = name
	b.out = b.named()
	return &b
}

// SetLevel sets a floor for this logger and those derived from it; the
// host log's own level still applies.
func (a *hcAdapter) SetLevel(l hclog.Level) {
	a.min.mu.Lock()
	a.min.l = l
	a.min.mu.Unlock()
}

// GetLevel returns the least severe hclog level that would be written.
func (a *hcAdapter) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn, hclog.Error} {
		if a.enabled(l) {
			return l
		}
	}
	return hclog.Off
}

func (a *hcAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(a.StandardWriter(opts), "", 0)
}

func (a *hcAdapter) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	if opts == nil {
		opts = &hclog.StandardLoggerOptions{}
	}
	return &stdWriter{a: a, opts: *opts}
}

// stdWriter turns standard-library log lines into log records.
type stdWriter struct {
	a    *hcAdapter
	opts hclog.StandardLoggerOptions
}

var levelPrefixes = []struct {
	prefix string
	level  hclog.Level
}{
	{"[TRACE]", hclog.Trace}, {"[DEBUG]", hclog.Debug}, {"[INFO]", hclog.Info},
	{"[WARN]", hclog.Warn}, {"[ERROR]", hclog.Error}, {"[ERR]", hclog.Error},
}

func (w *stdWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		msg := strings.TrimSpace(string(line))
		level := hclog.Info
		if w.opts.ForceLevel != hclog.NoLevel {
			level = w.opts.ForceLevel
		} else if w.opts.InferLevels {
			for _, lp := range levelPrefixes {
				if strings.HasPrefix(msg, lp.prefix) {
					level, msg = lp.level, strings.TrimSpace(msg[len(lp.prefix):])
					break
				}
			}
		}
		w.a.Log(level, msg)
	}
	return len(p), nil
}
