package sdk_test

import (
	"bytes"
	"errors"
	"math"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

var wireCases = []struct {
	name string
	ev   sdk.Event
	ts   int64
}{
	{name: "telemetry", ts: 1764000000123456789, ev: sdk.Event{Type: "exec", Severity: sdk.SevInfo, Fields: []sdk.Field{
		sdk.Int("pid", 4242), sdk.String("exe", "/usr/bin/curl"), sdk.Bool("root", true),
	}}},
	{name: "alert", ts: 1, ev: sdk.Event{Type: "listener_new", Alert: true, Severity: sdk.SevCritical, Fields: []sdk.Field{
		sdk.Int("port", 4444), sdk.String("addr", "0.0.0.0"),
	}}},
	{name: "no fields, emergency", ts: 99, ev: sdk.Event{Type: "panic", Alert: true, Severity: sdk.SevEmergency}},
	{name: "zero time", ts: 0, ev: sdk.Event{Type: "t", Severity: sdk.SevDebug}},
	{name: "before 1970", ts: -5_000_000_000, ev: sdk.Event{Type: "old"}},
	{name: "empty type and key", ts: 7, ev: sdk.Event{Fields: []sdk.Field{sdk.String("", "")}}},
	{name: "extreme ints and false", ts: math.MaxInt64, ev: sdk.Event{Type: "n", Fields: []sdk.Field{
		sdk.Int("min", math.MinInt64), sdk.Int("max", math.MaxInt64), sdk.Int("neg", -1), sdk.Int("zero", 0), sdk.Bool("no", false),
	}}},
	{name: "unicode and long strings", ts: 3, ev: sdk.Event{Type: "ünïcode", Fields: []sdk.Field{
		sdk.String("cmdline", string(bytes.Repeat([]byte("x"), 70000))), sdk.String("名前", "値"),
	}}},
}

// toProto is what the record of ev must decode to with the generated code.
func toProto(ev *sdk.Event, ts int64) *pluginpb.Event {
	pb := &pluginpb.Event{Type: ev.Type, TimeUnixNano: ts, Alert: ev.Alert, Severity: uint32(ev.Severity)}
	for _, f := range ev.Fields {
		pf := &pluginpb.Field{Key: f.Key}
		switch f.Kind {
		case sdk.KindInt:
			pf.Value = &pluginpb.Field_Int{Int: f.Int}
		case sdk.KindBool:
			pf.Value = &pluginpb.Field_Bool{Bool: f.Int != 0}
		default:
			pf.Value = &pluginpb.Field_Str{Str: f.Str}
		}
		pb.Fields = append(pb.Fields, pf)
	}
	return pb
}

// fromView turns a parsed record back into an sdk.Event to compare.
func fromView(t *testing.T, v *sdk.EventView) (sdk.Event, int64) {
	t.Helper()
	ev := sdk.Event{Type: string(v.Type), Alert: v.Alert, Severity: v.Severity}
	it := v.Fields()
	for it.Next() {
		f := sdk.Field{Key: string(it.Key), Kind: it.Kind, Int: it.Int}
		if it.Kind == sdk.KindString {
			f.Str = string(it.Str)
		}
		ev.Fields = append(ev.Fields, f)
	}
	if err := it.Err(); err != nil {
		t.Fatalf("fields: %v", err)
	}
	if len(ev.Fields) != v.NumFields() {
		t.Fatalf("NumFields %d, iterated %d", v.NumFields(), len(ev.Fields))
	}
	return ev, v.TimeUnixNano
}

func sameEvent(a, b sdk.Event) bool {
	if a.Type != b.Type || a.Alert != b.Alert || a.Severity != b.Severity || len(a.Fields) != len(b.Fields) {
		return false
	}
	for i := range a.Fields {
		if a.Fields[i] != b.Fields[i] {
			return false
		}
	}
	return true
}

func TestWireRoundTrip(t *testing.T) {
	for _, tt := range wireCases {
		t.Run(tt.name, func(t *testing.T) {
			buf := sdk.AppendEventRecord([]byte("prefix"), &tt.ev, tt.ts)
			if !bytes.HasPrefix(buf, []byte("prefix")) {
				t.Fatal("AppendEventRecord overwrote dst")
			}
			rec, rest, err := sdk.NextRecord(buf[len("prefix"):])
			if err != nil || len(rest) != 0 {
				t.Fatalf("NextRecord: %v, %d bytes left", err, len(rest))
			}

			var v sdk.EventView
			if err := sdk.ParseEvent(rec, &v); err != nil {
				t.Fatalf("ParseEvent: %v", err)
			}
			got, ts := fromView(t, &v)
			if !sameEvent(got, tt.ev) || ts != tt.ts {
				t.Errorf("ParseEvent = %+v at %d, want %+v at %d", got, ts, tt.ev, tt.ts)
			}

			var pb pluginpb.Event
			if err := proto.Unmarshal(rec, &pb); err != nil {
				t.Fatalf("proto.Unmarshal: %v", err)
			}
			if want := toProto(&tt.ev, tt.ts); !proto.Equal(&pb, want) {
				t.Errorf("proto.Unmarshal = %v, want %v", &pb, want)
			}

			// The other direction: a record marshalled by the generated
			// code (e.g. a plugin in another language) parses the same.
			pbRec, err := proto.Marshal(toProto(&tt.ev, tt.ts))
			if err != nil {
				t.Fatal(err)
			}
			if err := sdk.ParseEvent(pbRec, &v); err != nil {
				t.Fatalf("ParseEvent of proto.Marshal output: %v", err)
			}
			if got, ts := fromView(t, &v); !sameEvent(got, tt.ev) || ts != tt.ts {
				t.Errorf("ParseEvent(proto.Marshal) = %+v at %d, want %+v", got, ts, tt.ev)
			}
			// Where proto3 writes every field (no type, time or key is a
			// zero value, which proto3 leaves out), the bytes are identical.
			if allWritten(&tt.ev, tt.ts) && !bytes.Equal(pbRec, rec) {
				t.Errorf("encoding differs from proto.Marshal:\n%x\n%x", rec, pbRec)
			}
		})
	}
}

func allWritten(ev *sdk.Event, ts int64) bool {
	for _, f := range ev.Fields {
		if f.Key == "" {
			return false
		}
	}
	return ev.Type != "" && ts != 0
}

func TestWireManyRecords(t *testing.T) {
	var buf []byte
	for i := range wireCases {
		buf = sdk.AppendEventRecord(buf, &wireCases[i].ev, wireCases[i].ts)
	}
	var v sdk.EventView
	for i := 0; len(buf) > 0; i++ {
		rec, rest, err := sdk.NextRecord(buf)
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if err := sdk.ParseEvent(rec, &v); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if got, _ := fromView(t, &v); !sameEvent(got, wireCases[i].ev) {
			t.Fatalf("record %d = %+v, want %+v", i, got, wireCases[i].ev)
		}
		buf = rest
	}
}

func TestWireSkipsUnknownFields(t *testing.T) {
	// A newer plugin may add fields to Event and Field; an older host
	// skips them. Field 9 (varint) and 10 (bytes) on both messages:
	ev := sdk.Event{Type: "x", Fields: []sdk.Field{sdk.Int("a", 1)}}
	rec, _, _ := sdk.NextRecord(sdk.AppendEventRecord(nil, &ev, 5))
	field := []byte{0x0a, 0x01, 'k', 0x48, 0x07, 0x52, 0x02, 'h', 'i', 0x18, 0x04} // key "k", f9=7, f10="hi", int 2
	rec = append(append([]byte{}, rec...), 0x48, 0x07, 0x52, 0x02, 'h', 'i', 0x2a, byte(len(field)))
	rec = append(rec, field...)
	var v sdk.EventView
	if err := sdk.ParseEvent(rec, &v); err != nil {
		t.Fatal(err)
	}
	got, _ := fromView(t, &v)
	want := sdk.Event{Type: "x", Fields: []sdk.Field{sdk.Int("a", 1), sdk.Int("k", 2)}}
	if !sameEvent(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestWireMalformed(t *testing.T) {
	good := sdk.AppendEventRecord(nil, &wireCases[0].ev, wireCases[0].ts)
	tests := []struct {
		name string
		buf  []byte
	}{
		{"length past the end", good[:len(good)-1]},
		{"bad length varint", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"truncated tag", []byte{0x01, 0x80}},
		{"bytes past the record", []byte{0x02, 0x0a, 0x05}},
		{"field message truncated", []byte{0x03, 0x2a, 0x05, 0x0a}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, _, err := sdk.NextRecord(tt.buf)
			if err == nil {
				var v sdk.EventView
				if err = sdk.ParseEvent(rec, &v); err == nil {
					it := v.Fields()
					for it.Next() {
					}
					err = it.Err()
				}
			}
			if !errors.Is(err, sdk.ErrMalformedEvent) {
				t.Errorf("error = %v, want ErrMalformedEvent", err)
			}
		})
	}
}

func TestSeverityOutOfRange(t *testing.T) {
	tests := []struct {
		name string
		raw  uint64
		want sdk.Severity
	}{
		{"in range", 3, sdk.SevError},
		{"above 255 reads as debug", 1000, sdk.SevDebug},
		{"above uint32 is truncated as protobuf does", 1<<32 + 3, sdk.SevError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := []byte{0x20} // field 4, varint
			for u := tt.raw; ; u >>= 7 {
				if u < 0x80 {
					rec = append(rec, byte(u))
					break
				}
				rec = append(rec, byte(u)|0x80)
			}
			var v sdk.EventView
			if err := sdk.ParseEvent(rec, &v); err != nil {
				t.Fatal(err)
			}
			if v.Severity != tt.want {
				t.Errorf("severity %d parsed as %d, want %d", tt.raw, v.Severity, tt.want)
			}
		})
	}
}

func TestSeverityNames(t *testing.T) {
	want := []string{"emergency", "alert", "critical", "error", "warning", "notice", "info", "debug", "unknown"}
	for i, w := range want {
		if got := sdk.Severity(i).String(); got != w {
			t.Errorf("Severity(%d) = %s, want %s", i, got, w)
		}
	}
}

// FuzzParseEvent: arbitrary bytes never panic the decoder; whatever the
// generated code accepts, ParseEvent reads the same; and a valid event
// built from the input round-trips.
func FuzzParseEvent(f *testing.F) {
	for i := range wireCases {
		if len(wireCases[i].ev.Fields) > 0 && len(wireCases[i].ev.Fields[0].Str) > 1000 {
			continue
		}
		f.Add(sdk.AppendEventRecord(nil, &wireCases[i].ev, wireCases[i].ts))
	}
	f.Add([]byte{0x03, 0x2a, 0x05, 0x0a})
	f.Fuzz(func(t *testing.T, b []byte) {
		var v sdk.EventView
		for rest := b; len(rest) > 0; {
			rec, r, err := sdk.NextRecord(rest)
			if err != nil {
				break
			}
			rest = r
			if sdk.ParseEvent(rec, &v) != nil {
				continue
			}
			it := v.Fields()
			n := 0
			for it.Next() {
				n++
			}
			var pb pluginpb.Event
			if it.Err() != nil || proto.Unmarshal(rec, &pb) != nil {
				continue
			}
			var sev sdk.Severity
			if pb.Severity > 255 {
				sev = sdk.SevDebug
			} else {
				sev = sdk.Severity(pb.Severity)
			}
			if n != len(pb.Fields) || string(v.Type) != pb.Type || v.TimeUnixNano != pb.TimeUnixNano || v.Alert != pb.Alert || v.Severity != sev {
				t.Fatalf("ParseEvent and proto.Unmarshal disagree on %x:\n%+v\n%v", rec, v, &pb)
			}
		}

		// Build a valid event from the input and round-trip it.
		ev := sdk.Event{Type: string(b[:len(b)/2]), Alert: len(b)%2 == 1, Severity: sdk.Severity(len(b) % 8)}
		for i, c := range b[len(b)/2:] {
			switch c % 3 {
			case 0:
				ev.Fields = append(ev.Fields, sdk.String(string(b[:i%len(b)]), string(b[i:])))
			case 1:
				ev.Fields = append(ev.Fields, sdk.Int(string(c), int64(c)*-1e15))
			default:
				ev.Fields = append(ev.Fields, sdk.Bool("", c%2 == 0))
			}
		}
		ts := time.Unix(int64(len(b)), 0).UnixNano()
		rec, rest, err := sdk.NextRecord(sdk.AppendEventRecord(nil, &ev, ts))
		if err != nil || len(rest) != 0 {
			t.Fatalf("NextRecord of a fresh record: %v", err)
		}
		if err := sdk.ParseEvent(rec, &v); err != nil {
			t.Fatalf("ParseEvent of a fresh record: %v", err)
		}
		if got, gotTS := fromView(t, &v); !sameEvent(got, ev) || gotTS != ts {
			t.Fatalf("round trip of %+v gave %+v", ev, got)
		}
	})
}
