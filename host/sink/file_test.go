package sink

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigil-hids/vigil/sdk"
)

func TestMain(m *testing.M) {
	// lumberjack starts one goroutine per file to remove old backups and
	// never stops it (v2.2.1); it is idle after Close.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("gopkg.in/natefinch/lumberjack%2ev2.(*Logger).millRun"))
}

func batchOf(plugin string, n int, ev func(i int) *sdk.Event) *Batch {
	var recs []byte
	for i := range n {
		e := ev(i)
		ts := int64(i)
		if !e.Time.IsZero() {
			ts = e.Time.UnixNano()
		}
		recs = sdk.AppendEventRecord(recs, e, ts)
	}
	return &Batch{Plugin: plugin, Version: "1.0.0", Count: n, Records: recs}
}

func TestFileRotationKeepsTwoFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.ndjson")
	s, err := NewFile(FileConfig{Path: path, MaxSizeMB: 1}, "h1")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pad := strings.Repeat("x", 900)
	b := batchOf("procmon", 200, func(i int) *sdk.Event {
		return &sdk.Event{Type: "exec", Fields: []sdk.Field{sdk.Int("i", int64(i)), sdk.String("pad", pad)}}
	})
	// About 200 KB a batch: 30 batches make six MiB, five rotations.
	for range 30 {
		if err := s.Write(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// lumberjack removes the older backup in a goroutine of its own after
	// each rotation; wait for it rather than sleep a fixed time.
	var names []string
	for deadline := time.Now().Add(10 * time.Second); ; {
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
		t.Fatalf("files after rotation: %v, want the live file and one backup", names)
	}
	for _, n := range names {
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 1<<20 {
			t.Errorf("%s is %d bytes, over the 1 MiB size", n, fi.Size())
		}
		checkLines(t, filepath.Join(dir, n))
	}
	if names[0] != "events.ndjson" && names[1] != "events.ndjson" {
		t.Errorf("live file missing: %v", names)
	}
}

// checkLines asserts every line of the file is a valid, whole event.
func checkLines(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("%s line %d: %v", path, n+1, err)
		}
		if l.Plugin != "procmon" || l.Type != "exec" {
			t.Fatalf("%s line %d: %+v", path, n+1, l)
		}
		n++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Errorf("%s has no lines", path)
	}
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

func TestWriterErrors(t *testing.T) {
	good := batchOf("p", 3, func(i int) *sdk.Event { return &sdk.Event{Type: "t"} })
	bad := &Batch{Plugin: "p", Count: 3, Records: good.Records[:len(good.Records)-1]}
	diskFull := errors.New("no space left on device")
	tests := []struct {
		name    string
		w       func() *Writer
		b       *Batch
		wantErr error
		wantOut int // lines
	}{
		{name: "ok", w: func() *Writer { return NewWriter("buf", &bytes.Buffer{}, "h") }, b: good, wantOut: 3},
		{name: "malformed record", w: func() *Writer { return NewWriter("buf", &bytes.Buffer{}, "h") }, b: bad, wantErr: sdk.ErrMalformedEvent},
		{name: "count beyond records", w: func() *Writer { return NewWriter("buf", &bytes.Buffer{}, "h") }, b: &Batch{Plugin: "p", Count: 4, Records: good.Records}, wantErr: sdk.ErrMalformedEvent},
		{name: "write fails", w: func() *Writer { return NewWriter("fail", failWriter{diskFull}, "h") }, b: good, wantErr: diskFull},
		{name: "closed", w: func() *Writer { w := NewWriter("buf", &bytes.Buffer{}, "h"); _ = w.Close(); return w }, b: good, wantErr: ErrClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := tt.w()
			err := w.Write(context.Background(), tt.b)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if buf, ok := w.w.(*bytes.Buffer); ok {
				if got := bytes.Count(buf.Bytes(), []byte("\n")); got != tt.wantOut {
					t.Fatalf("%d lines written, want %d", got, tt.wantOut)
				}
			}
		})
	}
}

func TestFileConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  FileConfig
		want string
	}{
		{name: "defaults", cfg: FileConfig{}},
		{name: "too big", cfg: FileConfig{MaxSizeMB: 5000}, want: "sink.file.max_size_mb must be between 1 and 4096 (got 5000)"},
		{name: "negative", cfg: FileConfig{MaxSizeMB: -1}, want: "sink.file.max_size_mb must be between 1 and 4096 (got -1)"},
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
