package logging

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// lumberjack keeps one idle goroutine per file for ever (v2.2.1).
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("gopkg.in/natefinch/lumberjack%2ev2.(*Logger).millRun"))
}

func lines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not JSON: %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestLevels(t *testing.T) {
	tests := []struct {
		name    string
		setting string
		want    []string // levels written, from emergency to debug
	}{
		{name: "debug writes all", setting: "debug", want: []string{"emergency", "alert", "critical", "error", "warning", "notice", "info", "debug"}},
		{name: "warning", setting: "warning", want: []string{"emergency", "alert", "critical", "error", "warning"}},
		{name: "notice", setting: "NOTICE", want: []string{"emergency", "alert", "critical", "error", "warning", "notice"}},
		{name: "emergency only", setting: "emergency", want: []string{"emergency"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			l := NewWriter(&buf, "info")
			if err := l.SetLevel(tt.setting); err != nil {
				t.Fatal(err)
			}
			l.Emergency("m")
			l.Alert("m")
			l.Critical("m")
			l.Error("m")
			l.Warn("m")
			l.Notice("m")
			l.Info("m")
			l.Debug("m")
			var got []string
			for _, m := range lines(t, buf.Bytes()) {
				got = append(got, m["level"].(string))
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("written %v, want %v", got, tt.want)
			}
			if l.Level() != strings.ToLower(tt.setting) {
				t.Fatalf("Level() = %q", l.Level())
			}
		})
	}
}

func TestSetLevelRejectsUnknown(t *testing.T) {
	l := NewWriter(&bytes.Buffer{}, "notice")
	err := l.SetLevel("verbose")
	if !errors.Is(err, ErrBadLevel) {
		t.Fatalf("err = %v", err)
	}
	want := `logging: unknown level "verbose": must be one of emergency, alert, critical, error, warning, notice, info, debug`
	if err.Error() != want {
		t.Fatalf("err = %q\nwant  %q", err, want)
	}
	if l.Level() != "notice" {
		t.Fatalf("level changed to %q by a bad name", l.Level())
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "stderr only", cfg: Config{Stderr: true}},
		{name: "file", cfg: Config{File: "/var/log/vigil/host.log", Level: "debug"}},
		{name: "bad level", cfg: Config{Stderr: true, Level: "warn"}, want: `log.level must be one of emergency, alert, critical, error, warning, notice, info, debug (got "warn")`},
		{name: "size", cfg: Config{Stderr: true, MaxSizeMB: 2048}, want: "log.max_size_mb must be between 1 and 1024 (got 2048)"},
		{name: "nowhere", cfg: Config{}, want: `log.file must be set when log.stderr is false (got "")`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if err := tt.cfg.Validate(); err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFileRotationKeepsTwoFiles(t *testing.T) {
	dir := t.TempDir()
	l, err := New(Config{File: filepath.Join(dir, "host.log"), MaxSizeMB: 1})
	if err != nil {
		t.Fatal(err)
	}
	pad := strings.Repeat("y", 1000)
	for i := range 4000 { // about 4 MB: three rotations
		l.Info("filler", "i", i, "pad", pad)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var names []string
	for deadline := time.Now().Add(10 * time.Second); ; { // lumberjack removes old backups in the background
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		names = names[:0]
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if len(names) <= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(names) != 2 {
		t.Fatalf("log files %v, want host.log and one backup", names)
	}
	b, err := os.ReadFile(filepath.Join(dir, "host.log"))
	if err != nil {
		t.Fatal(err)
	}
	if ls := lines(t, b); len(ls) == 0 || ls[len(ls)-1]["i"] != float64(3999) {
		t.Fatalf("the live file does not end with the last line")
	}
}

func TestHCLogAdapter(t *testing.T) {
	var buf bytes.Buffer
	l := NewWriter(&buf, "info")
	// As go-plugin uses it: Named with the binary's name, then the
	// relayed plugin lines at their own levels.
	h := HCLog(l.Logger, "procmon").Named("vigil-procmon")
	h.Debug("hidden at info")
	h.Info("listening", "addr", "/tmp/plugin123")
	h.With("pid", 42).Warn("queue full", "dropped", 7)
	h.Error("boom", "error", errors.New("bad thing"))
	h.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}).Print("[WARN] from log.Print")
	if h.IsDebug() || !h.IsInfo() || h.GetLevel() != hclog.Info {
		t.Fatalf("IsDebug %v IsInfo %v GetLevel %v at info", h.IsDebug(), h.IsInfo(), h.GetLevel())
	}
	if err := l.SetLevel("debug"); err != nil {
		t.Fatal(err)
	}
	h.Trace("trace shows as debug")
	got := lines(t, buf.Bytes())
	want := []map[string]any{
		{"level": "info", "msg": "listening", "plugin": "procmon", "logger": "vigil-procmon", "addr": "/tmp/plugin123"},
		{"level": "warning", "msg": "queue full", "plugin": "procmon", "pid": float64(42), "dropped": float64(7)},
		{"level": "error", "msg": "boom", "error": "bad thing"},
		{"level": "warning", "msg": "from log.Print"},
		{"level": "debug", "msg": "trace shows as debug", "plugin": "procmon"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d: %v", len(got), len(want), got)
	}
	for i, w := range want {
		for k, v := range w {
			if got[i][k] != v {
				t.Errorf("line %d: %s = %v, want %v (%v)", i, k, got[i][k], v, got[i])
			}
		}
	}
	if h.Name() != "vigil-procmon" || h.Named("sub").Name() != "vigil-procmon.sub" || len(h.With("a", 1).ImpliedArgs()) != 2 {
		t.Fatalf("names %q %q", h.Name(), h.Named("sub").Name())
	}
	h.SetLevel(hclog.Error)
	if h.IsWarn() || !h.IsError() {
		t.Fatalf("SetLevel(Error) not applied")
	}
}

func TestLevelName(t *testing.T) {
	tests := []struct {
		name  string
		level slog.Level
		want  string
	}{
		{name: "between info and notice", level: 1, want: "info"},
		{name: "between error and critical", level: 9, want: "error"},
		{name: "above emergency", level: 100, want: "emergency"},
		{name: "below debug", level: -10, want: "debug"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := LevelName(tt.level); got != tt.want {
				t.Fatalf("LevelName(%d) = %q, want %q", tt.level, got, tt.want)
			}
		})
	}
}
