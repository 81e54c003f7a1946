package sdktest

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

// Event is a decoded event as the host would see it.
type Event struct {
	Type     string
	Time     time.Time
	Alert    bool
	Severity sdk.Severity
	// Fields holds each field's value: a string, an int64 or a bool.
	Fields map[string]any
	// Batch is the sequence number of the batch that carried the event.
	Batch uint64
}

// Str returns the string field key, or "" if it is absent or not a string.
func (e Event) Str(key string) string { s, _ := e.Fields[key].(string); return s }

// Int returns the integer field key, or 0.
func (e Event) Int(key string) int64 { n, _ := e.Fields[key].(int64); return n }

// Bool returns the boolean field key, or false.
func (e Event) Bool(key string) bool { b, _ := e.Fields[key].(bool); return b }

// String formats the event for failure messages.
func (e Event) String() string {
	keys := make([]string, 0, len(e.Fields))
	for k := range e.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%s{", e.Type)
	if e.Alert {
		fmt.Fprintf(&b, "alert %s; ", e.Severity)
	}
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s=%v", k, e.Fields[k])
	}
	b.WriteString("}")
	return b.String()
}

// OfType matches events of type typ, for WaitEvents.
func OfType(typ string) func(Event) bool { return func(e Event) bool { return e.Type == typ } }

// Alerts matches alerts, for WaitEvents.
func Alerts() func(Event) bool { return func(e Event) bool { return e.Alert } }

// decodeBatch decodes every record of batch with NextRecord and ParseEvent,
// checking the batch's own claims (count, alerts lane) on the way.
func decodeBatch(batch *pluginpb.EventBatch) ([]Event, error) {
	var evs []Event
	var v sdk.EventView
	for rest := batch.Events; len(rest) > 0; {
		rec, r, err := sdk.NextRecord(rest)
		if err != nil {
			return evs, err
		}
		rest = r
		if err := sdk.ParseEvent(rec, &v); err != nil {
			return evs, err
		}
		ev := Event{
			Type:     string(v.Type),
			Time:     time.Unix(0, v.TimeUnixNano),
			Alert:    v.Alert,
			Severity: v.Severity,
			Fields:   make(map[string]any, v.NumFields()),
			Batch:    batch.Seq,
		}
		for it := v.Fields(); it.Next(); {
			switch it.Kind {
			case sdk.KindInt:
				ev.Fields[string(it.Key)] = it.Int
			case sdk.KindBool:
				ev.Fields[string(it.Key)] = it.Int != 0
			default:
				ev.Fields[string(it.Key)] = string(it.Str)
			}
			if err := it.Err(); err != nil {
				return evs, err
			}
		}
		if batch.Alerts != ev.Alert {
			return evs, fmt.Errorf("event %s in a batch with alerts=%t", ev, batch.Alerts)
		}
		evs = append(evs, ev)
	}
	if len(evs) != int(batch.Count) {
		return evs, fmt.Errorf("batch says count %d but carries %d records", batch.Count, len(evs))
	}
	return evs, nil
}
