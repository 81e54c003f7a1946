package sink

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/sdk"
)

// line is the NDJSON object as encoding/json reads it back.
type line struct {
	TS            string         `json:"ts"`
	Host          string         `json:"host"`
	Plugin        string         `json:"plugin"`
	PluginVersion string         `json:"plugin_version"`
	Type          string         `json:"type"`
	Alert         bool           `json:"alert"`
	Severity      string         `json:"severity"`
	Fields        map[string]any `json:"fields"`
}

func record(ev *sdk.Event, ts int64) []byte {
	rec, _, err := sdk.NextRecord(sdk.AppendEventRecord(nil, ev, ts))
	if err != nil {
		panic(err)
	}
	return rec
}

func TestEncoderExactLine(t *testing.T) {
	ts := time.Date(2026, 11, 25, 20, 1, 2, 123456789, time.UTC).UnixNano()
	ev := &sdk.Event{Type: "exec", Severity: sdk.SevInfo, Fields: []sdk.Field{sdk.Int("pid", 123), sdk.String("exe", "/usr/bin/ls")}}
	e := NewEncoder("h1")
	e.SetSource("procmon", "0.1.0")
	got, err := e.AppendLine(nil, record(ev, ts))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"ts":"2026-11-25T20:01:02.123456789Z","host":"h1","plugin":"procmon","plugin_version":"0.1.0","type":"exec","alert":false,"severity":"info","fields":{"pid":123,"exe":"/usr/bin/ls"}}` + "\n"
	if string(got) != want {
		t.Fatalf("line\n got %s\nwant %s", got, want)
	}
}

func TestEncoderEscaping(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // as decoded by encoding/json
	}{
		{name: "plain", in: "/usr/bin/ls", want: "/usr/bin/ls"},
		{name: "empty", in: "", want: ""},
		{name: "quote and backslash", in: `a"b\c`, want: `a"b\c`},
		{name: "newline tab cr", in: "a\nb\tc\rd", want: "a\nb\tc\rd"},
		{name: "nul and controls", in: "\x00\x01\x1f\x7f", want: "\x00\x01\x1f\x7f"},
		{name: "html stays", in: "<script>&</script>", want: "<script>&</script>"},
		{name: "utf8", in: "日本語 ünïcødé 🙂", want: "日本語 ünïcødé 🙂"},
		{name: "line separators", in: "a\u2028b\u2029c", want: "a\u2028b\u2029c"},
		{name: "invalid byte", in: "a\xffb", want: "a\ufffdb"},
		{name: "truncated rune", in: "ab\xe6\x97", want: "ab\ufffd\ufffd"},
		{name: "overlong encoding", in: "\xc0\xaf", want: "\ufffd\ufffd"},
		{name: "surrogate half", in: "\xed\xa0\x80", want: "\ufffd\ufffd\ufffd"},
		{name: "json injection", in: `","alert":true,"x":"`, want: `","alert":true,"x":"`},
		{name: "lone backslash end", in: `\`, want: `\`},
	}
	e := NewEncoder("host \"1\"\n")
	e.SetSource("pl\xffugin", "v\\1")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := &sdk.Event{Type: tt.in, Alert: true, Severity: sdk.SevCritical, Fields: []sdk.Field{
				sdk.String(tt.in, tt.in), sdk.String("k", tt.in), sdk.Bool("b", true), sdk.Int("neg", math.MinInt64),
			}}
			out, err := e.AppendLine(nil, record(ev, 1))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Count(out, []byte("\n")) != 1 || out[len(out)-1] != '\n' {
				t.Fatalf("not one line: %q", out)
			}
			var l line
			if err := json.Unmarshal(out, &l); err != nil {
				t.Fatalf("invalid JSON %q: %v", out, err)
			}
			if l.Type != tt.want || l.Fields["k"] != tt.want {
				t.Errorf("type %q, field k %q, want %q", l.Type, l.Fields["k"], tt.want)
			}
			if _, ok := l.Fields[tt.want]; !ok {
				t.Errorf("key %q missing from %v", tt.want, l.Fields)
			}
			if l.Host != "host \"1\"\n" || l.Plugin != "pl\ufffdugin" || l.PluginVersion != `v\1` {
				t.Errorf("source %q %q %q", l.Host, l.Plugin, l.PluginVersion)
			}
			if !l.Alert || l.Severity != "critical" || l.Fields["b"] != true {
				t.Errorf("alert %v severity %q b %v", l.Alert, l.Severity, l.Fields["b"])
			}
			if l.TS != "1970-01-01T00:00:00.000000001Z" {
				t.Errorf("ts %q", l.TS)
			}
			// Ints are written exactly, not through float64.
			if !bytes.Contains(out, []byte(`"neg":-9223372036854775808`)) {
				t.Errorf("int64 min not exact in %s", out)
			}
		})
	}
}

func TestEncoderRejectsMalformed(t *testing.T) {
	good := record(&sdk.Event{Type: "x", Fields: []sdk.Field{sdk.String("a", "b")}}, 5)
	tests := []struct {
		name string
		rec  []byte
	}{
		{name: "truncated", rec: good[:len(good)-2]},
		{name: "bad tag", rec: []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{name: "field length past end", rec: append(append([]byte(nil), good[:len(good)-6]...), 0x2a, 0x7f)},
	}
	e := NewEncoder("h")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := []byte("prefix")
			out, err := e.AppendLine(dst, tt.rec)
			if !errors.Is(err, sdk.ErrMalformedEvent) {
				t.Fatalf("err = %v, want ErrMalformedEvent", err)
			}
			if string(out) != "prefix" {
				t.Fatalf("dst changed on error: %q", out)
			}
		})
	}
}

func TestEncoderAllocs(t *testing.T) {
	rec := record(&sdk.Event{Type: "exec", Fields: []sdk.Field{
		sdk.Int("pid", 1), sdk.Int("ppid", 2), sdk.String("exe", "/usr/bin/\xffls"), sdk.String("cmdline", "ls -l \"x\""),
		sdk.Int("uid", 0), sdk.Bool("root", true),
	}}, time.Now().UnixNano())
	e := NewEncoder("h1")
	buf := make([]byte, 0, 4096)
	allocs := testing.AllocsPerRun(100, func() {
		e.SetSource("procmon", "0.1.0")
		var err error
		if buf, err = e.AppendLine(buf[:0], rec); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("AppendLine allocates %v times per event, want 0", allocs)
	}
}

// FuzzEncoder feeds arbitrary bytes as an event record: the encoder either
// rejects it with ErrMalformedEvent or writes exactly one valid JSON line.
func FuzzEncoder(f *testing.F) {
	f.Add(record(&sdk.Event{Type: "exec", Fields: []sdk.Field{sdk.Int("pid", 1), sdk.String("exe", "/bin/sh")}}, 1))
	f.Add(record(&sdk.Event{Type: "a\"\\\n\xff", Alert: true, Severity: 200, Fields: []sdk.Field{sdk.Bool("b", true), sdk.String("\x00", "\u2028")}}, -1))
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x01, 0xff})
	f.Fuzz(func(t *testing.T, rec []byte) {
		e := NewEncoder("h")
		e.SetSource("p", "v")
		out, err := e.AppendLine(nil, rec)
		if err != nil {
			if !errors.Is(err, sdk.ErrMalformedEvent) {
				t.Fatalf("unexpected error %v", err)
			}
			if len(out) != 0 {
				t.Fatalf("output on error: %q", out)
			}
			return
		}
		if bytes.IndexByte(out, '\n') != len(out)-1 {
			t.Fatalf("not exactly one line: %q", out)
		}
		var l line
		if err := json.Unmarshal(out, &l); err != nil {
			t.Fatalf("invalid JSON %q: %v", out, err)
		}
	})
}

func TestEncoderTimestamps(t *testing.T) {
	e := NewEncoder("h")
	for _, ts := range []int64{
		0, 1, 999_999_999, 1_000_000_000, 1_000_000_001,
		time.Date(2026, 11, 25, 20, 1, 2, 123456789, time.UTC).UnixNano(),
		time.Date(2026, 11, 25, 20, 1, 2, 5, time.UTC).UnixNano(),
		time.Date(2026, 11, 25, 20, 1, 3, 0, time.UTC).UnixNano(),
		-1, -1_000_000_001, math.MaxInt64, math.MinInt64,
	} {
		t.Run(fmt.Sprint(ts), func(t *testing.T) {
			out, err := e.AppendLine(nil, record(&sdk.Event{Type: "x"}, ts))
			if err != nil {
				t.Fatal(err)
			}
			var l line
			if err := json.Unmarshal(out, &l); err != nil {
				t.Fatal(err)
			}
			if want := time.Unix(0, ts).UTC().Format("2006-01-02T15:04:05.000000000Z"); l.TS != want {
				t.Fatalf("ts %q, want %q", l.TS, want)
			}
		})
	}
}
