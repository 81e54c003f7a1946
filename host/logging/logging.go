// Package logging builds the host's structured logger: log/slog writing
// JSON lines, with the eight syslog severities of the original design
// (emergency … debug), to a file rotated as two files of a fixed size
// and/or to stderr, at a level that can be changed while the host runs.
// HCLog adapts it to hclog, the logger go-plugin uses, so plugin log lines
// land in the same log with the plugin's name as a field.
package logging

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"gopkg.in/natefinch/lumberjack.v2"
)

// Syslog severities as slog levels. slog's own Debug, Info, Warn and Error
// keep their values, so code may use slog.LevelWarn and the rest; the
// syslog-only levels sit between and above them.
const (
	LevelDebug     = slog.LevelDebug // 7 debug
	LevelInfo      = slog.LevelInfo  // 6 info
	LevelNotice    = slog.Level(2)   // 5 notice
	LevelWarning   = slog.LevelWarn  // 4 warning
	LevelError     = slog.LevelError // 3 error
	LevelCritical  = slog.Level(12)  // 2 critical
	LevelAlert     = slog.Level(16)  // 1 alert
	LevelEmergency = slog.Level(20)  // 0 emergency
)

// levels lists the names from the most to the least severe.
var levels = []struct {
	name  string
	level slog.Level
}{
	{"emergency", LevelEmergency},
	{"alert", LevelAlert},
	{"critical", LevelCritical},
	{"error", LevelError},
	{"warning", LevelWarning},
	{"notice", LevelNotice},
	{"info", LevelInfo},
	{"debug", LevelDebug},
}

// LevelNames are the accepted level names, most severe first.
var LevelNames = func() []string {
	n := make([]string, len(levels))
	for i, l := range levels {
		n[i] = l.name
	}
	return n
}()

// ErrBadLevel is returned for a level name that is not a syslog severity.
var ErrBadLevel = errors.New("logging: unknown level")

// ParseLevel returns the slog level of a syslog severity name.
func ParseLevel(name string) (slog.Level, error) {
	for _, l := range levels {
		if strings.EqualFold(name, l.name) {
			return l.level, nil
		}
	}
	return 0, fmt.Errorf("%w %q: must be one of %s", ErrBadLevel, name, strings.Join(LevelNames, ", "))
}

// LevelName returns the syslog name of a level: the most severe name whose
// level is at or below it (so slog.Level(1) is "info" and 9 is "error").
func LevelName(l slog.Level) string {
	for _, x := range levels {
		if l >= x.level {
			return x.name
		}
	}
	return "debug"
}

// Config configures the host log.
type Config struct {
	// Level is the least severe level written.
	Level string `yaml:"level" json:"level"`
	// File is the log file; empty means no file.
	File string `yaml:"file" json:"file"`
	// MaxSizeMB is the size of each of the two files, in MiB.
	MaxSizeMB int `yaml:"max_size_mb" json:"max_size_mb"`
	// Stderr also writes the log to stderr.
	Stderr bool `yaml:"stderr" json:"stderr"`
}

// Defaults: the original design's two files of "20M".
const (
	DefaultLevel     = "info"
	DefaultMaxSizeMB = 20
	MinMaxSizeMB     = 1
	MaxMaxSizeMB     = 1024
)

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Level == "" {
		c.Level = DefaultLevel
	}
	if c.MaxSizeMB == 0 {
		c.MaxSizeMB = DefaultMaxSizeMB
	}
	return c
}

// Validate checks c after defaults are applied.
func (c Config) Validate() error {
	c = c.WithDefaults()
	var errs []error
	if _, err := ParseLevel(c.Level); err != nil {
		errs = append(errs, fmt.Errorf("log.level must be one of %s (got %q)", strings.Join(LevelNames, ", "), c.Level))
	}
	if c.MaxSizeMB < MinMaxSizeMB || c.MaxSizeMB > MaxMaxSizeMB {
		errs = append(errs, fmt.Errorf("log.max_size_mb must be between %d and %d (got %d)", MinMaxSizeMB, MaxMaxSizeMB, c.MaxSizeMB))
	}
	if c.File == "" && !c.Stderr {
		errs = append(errs, errors.New(`log.file must be set when log.stderr is false (got "")`))
	}
	return errors.Join(errs...)
}

// Logger is the host's log: a *slog.Logger plus its level control and the
// file it owns.
type Logger struct {
	*slog.Logger
	level *slog.LevelVar
	file  io.Closer
}

// New opens the host log described by cfg.
func New(cfg Config) (*Logger, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	var ws []io.Writer
	var file io.Closer
	if cfg.File != "" {
		lj := &lumberjack.Logger{Filename: cfg.File, MaxSize: cfg.MaxSizeMB, MaxBackups: 1}
		ws = append(ws, lj)
		file = lj
	}
	if cfg.Stderr {
		ws = append(ws, os.Stderr)
	}
	l := NewWriter(allWriter(ws), cfg.Level)
	l.file = file
	return l, nil
}

// NewWriter returns a logger writing JSON lines to w at the named level
// ("info" if the name is not a severity).
func NewWriter(w io.Writer, level string) *Logger {
	lv := new(slog.LevelVar)
	if l, err := ParseLevel(level); err == nil {
		lv.Set(l)
	}
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv, ReplaceAttr: replaceLevel})
	return &Logger{Logger: slog.New(h), level: lv}
}

func replaceLevel(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.LevelKey && len(groups) == 0 {
		if l, ok := a.Value.Any().(slog.Level); ok {
			return slog.String(slog.LevelKey, LevelName(l))
		}
	}
	return a
}

// SetLevel changes the least severe level written, at once and for every
// logger derived from this one.
func (l *Logger) SetLevel(name string) error {
	lv, err := ParseLevel(name)
	if err != nil {
		return err
	}
	l.level.Set(lv)
	return nil
}

// Level returns the current level's name.
func (l *Logger) Level() string { return LevelName(l.level.Level()) }

// Close closes the log file, if any. Writes after Close reopen it, so
// close the logger last.
func (l *Logger) Close() error {
	if l.file == nil {
		return nil
	}
	if err := l.file.Close(); err != nil {
		return fmt.Errorf("closing log file: %w", err)
	}
	return nil
}

// Notice logs at the notice level.
func (l *Logger) Notice(msg string, args ...any) {
	l.Log(context.Background(), LevelNotice, msg, args...)
}

// Critical logs at the critical level.
func (l *Logger) Critical(msg string, args ...any) {
	l.Log(context.Background(), LevelCritical, msg, args...)
}

// Alert logs at the alert level.
func (l *Logger) Alert(msg string, args ...any) {
	l.Log(context.Background(), LevelAlert, msg, args...)
}

// Emergency logs at the emergency level.
func (l *Logger) Emergency(msg string, args ...any) {
	l.Log(context.Background(), LevelEmergency, msg, args...)
}

// allWriter writes every line to each writer even when one fails (a full
// disk must not silence stderr), and returns the first error.
type allWriter []io.Writer

func (ws allWriter) Write(p []byte) (int, error) {
	var first error
	for _, w := range ws {
		if _, err := w.Write(p); err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return 0, first
	}
	return len(p), nil
}
