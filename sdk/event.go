package sdk

import "time"

// Severity is a syslog severity, from Emergency (0) to Debug (7).
type Severity uint8

// Syslog severities, as the original design lists them.
const (
	SevEmergency Severity = iota
	SevAlert
	SevCritical
	SevError
	SevWarning
	SevNotice
	SevInfo
	SevDebug
)

var severityNames = [...]string{"emergency", "alert", "critical", "error", "warning", "notice", "info", "debug"}

// String returns the lower-case syslog name of s.
func (s Severity) String() string {
	if int(s) < len(severityNames) {
		return severityNames[s]
	}
	return "unknown"
}

// FieldKind says which value a Field carries.
type FieldKind uint8

// Field kinds.
const (
	KindString FieldKind = iota
	KindInt
	KindBool
)

// Field is one key and typed value of an event.
type Field struct {
	Key  string
	Kind FieldKind
	Str  string
	Int  int64
}

// String returns a string field.
func String(key, value string) Field { return Field{Key: key, Kind: KindString, Str: value} }

// Int returns an integer field.
func Int(key string, value int64) Field { return Field{Key: key, Kind: KindInt, Int: value} }

// Bool returns a boolean field.
func Bool(key string, value bool) Field {
	f := Field{Key: key, Kind: KindBool}
	if value {
		f.Int = 1
	}
	return f
}

// Event is one record a plugin emits: telemetry, or an alert when Alert is
// set. Emit encodes the event at once, so the caller may reuse the Event and
// its Fields slice for the next one without allocating.
type Event struct {
	// Type names the kind of record, e.g. "exec" or "listener_new".
	Type string
	// Time is when it happened; zero means the coarse clock's now.
	Time time.Time
	// Alert marks a detection. Alerts are queued ahead of telemetry and are
	// dropped last.
	Alert bool
	// Severity of an alert; telemetry is SevInfo by convention.
	Severity Severity
	Fields   []Field
}
