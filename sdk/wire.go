package sdk

import (
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// Event records travel packed in pluginpb.EventBatch.events: each record is a
// varint length followed by a pluginpb.Event message. Encoding and decoding
// by hand lets the plugin emit and the host route events without allocating
// per event; the bytes are exactly what proto.Marshal of pluginpb.Event would
// accept.

// Field numbers of pluginpb.Event and pluginpb.Field.
const (
	evType     = 1
	evTime     = 2
	evAlert    = 3
	evSeverity = 4
	evField    = 5

	fdKey  = 1
	fdStr  = 2
	fdInt  = 3
	fdBool = 4
)

// ErrMalformedEvent reports an event record that does not decode.
var ErrMalformedEvent = errors.New("sdk: malformed event record")

func fieldSize(f *Field) int {
	n := protowire.SizeTag(fdKey) + protowire.SizeBytes(len(f.Key))
	switch f.Kind {
	case KindInt:
		n += protowire.SizeTag(fdInt) + protowire.SizeVarint(protowire.EncodeZigZag(f.Int))
	case KindBool:
		n += protowire.SizeTag(fdBool) + 1
	default:
		n += protowire.SizeTag(fdStr) + protowire.SizeBytes(len(f.Str))
	}
	return n
}

func eventSize(ev *Event, timeNs int64, sev uint8) int {
	n := protowire.SizeTag(evType) + protowire.SizeBytes(len(ev.Type))
	n += protowire.SizeTag(evTime) + protowire.SizeVarint(uint64(timeNs))
	if ev.Alert {
		n += protowire.SizeTag(evAlert) + 1
	}
	if sev != 0 {
		n += protowire.SizeTag(evSeverity) + protowire.SizeVarint(uint64(sev))
	}
	for i := range ev.Fields {
		n += protowire.SizeTag(evField) + protowire.SizeBytes(fieldSize(&ev.Fields[i]))
	}
	return n
}

// AppendEventRecord appends ev as one length-prefixed record to dst. timeNs
// is the event time in Unix nanoseconds (the caller resolves a zero Time).
func AppendEventRecord(dst []byte, ev *Event, timeNs int64) []byte {
	sev := uint8(ev.Severity)
	dst = protowire.AppendVarint(dst, uint64(eventSize(ev, timeNs, sev)))
	dst = protowire.AppendTag(dst, evType, protowire.BytesType)
	dst = protowire.AppendString(dst, ev.Type)
	dst = protowire.AppendTag(dst, evTime, protowire.VarintType)
	dst = protowire.AppendVarint(dst, uint64(timeNs))
	if ev.Alert {
		dst = protowire.AppendTag(dst, evAlert, protowire.VarintType)
		dst = append(dst, 1)
	}
	if sev != 0 {
		dst = protowire.AppendTag(dst, evSeverity, protowire.VarintType)
		dst = protowire.AppendVarint(dst, uint64(sev))
	}
	for i := range ev.Fields {
		f := &ev.Fields[i]
		dst = protowire.AppendTag(dst, evField, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(fieldSize(f)))
		dst = protowire.AppendTag(dst, fdKey, protowire.BytesType)
		dst = protowire.AppendString(dst, f.Key)
		switch f.Kind {
		case KindInt:
			dst = protowire.AppendTag(dst, fdInt, protowire.VarintType)
			dst = protowire.AppendVarint(dst, protowire.EncodeZigZag(f.Int))
		case KindBool:
			dst = protowire.AppendTag(dst, fdBool, protowire.VarintType)
			dst = protowire.AppendVarint(dst, uint64(f.Int&1))
		default:
			dst = protowire.AppendTag(dst, fdStr, protowire.BytesType)
			dst = protowire.AppendString(dst, f.Str)
		}
	}
	return dst
}

// NextRecord splits the first length-prefixed record off b.
func NextRecord(b []byte) (rec, rest []byte, err error) {
	n, l := protowire.ConsumeVarint(b)
	if l < 0 || n > uint64(len(b)-l) {
		return nil, nil, fmt.Errorf("%w: bad record length", ErrMalformedEvent)
	}
	end := l + int(n)
	return b[l:end], b[end:], nil
}

// EventView is a decoded event whose byte slices point into the record it
// was parsed from; it is valid only as long as that record is.
type EventView struct {
	Type         []byte
	TimeUnixNano int64
	Alert        bool
	Severity     Severity
	fields       []byte
	nfields      int
}

// NumFields returns the number of fields in the event.
func (v *EventView) NumFields() int { return v.nfields }

// FieldIter walks an event's fields without allocating.
type FieldIter struct {
	b    []byte
	Key  []byte
	Kind FieldKind
	Str  []byte
	Int  int64
	err  error
}

// Fields returns an iterator over v's fields.
func (v *EventView) Fields() FieldIter { return FieldIter{b: v.fields} }

// Next advances to the next field and reports whether there is one.
func (it *FieldIter) Next() bool {
	for len(it.b) > 0 {
		num, typ, n := protowire.ConsumeTag(it.b)
		if n < 0 {
			it.err, it.b = ErrMalformedEvent, nil
			return false
		}
		it.b = it.b[n:]
		if num != evField || typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, it.b)
			if n < 0 {
				it.err, it.b = ErrMalformedEvent, nil
				return false
			}
			it.b = it.b[n:]
			continue
		}
		fb, n := protowire.ConsumeBytes(it.b)
		if n < 0 {
			it.err, it.b = ErrMalformedEvent, nil
			return false
		}
		it.b = it.b[n:]
		if err := it.parse(fb); err != nil {
			it.err, it.b = err, nil
			return false
		}
		return true
	}
	return false
}

// Err returns the decoding error that stopped the iteration, if any.
func (it *FieldIter) Err() error { return it.err }

func (it *FieldIter) parse(b []byte) error {
	it.Key, it.Kind, it.Str, it.Int = nil, KindString, nil, 0
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ErrMalformedEvent
		}
		b = b[n:]
		switch {
		case num == fdKey && typ == protowire.BytesType:
			it.Key, n = protowire.ConsumeBytes(b)
		case num == fdStr && typ == protowire.BytesType:
			it.Kind = KindString
			it.Str, n = protowire.ConsumeBytes(b)
		case num == fdInt && typ == protowire.VarintType:
			var u uint64
			u, n = protowire.ConsumeVarint(b)
			it.Kind, it.Int = KindInt, protowire.DecodeZigZag(u)
		case num == fdBool && typ == protowire.VarintType:
			var u uint64
			u, n = protowire.ConsumeVarint(b)
			it.Kind, it.Int = KindBool, int64(u&1)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return ErrMalformedEvent
		}
		b = b[n:]
	}
	return nil
}

// ParseEvent decodes one record (as returned by NextRecord) into v without
// allocating. Unknown fields are skipped, so newer plugins can add fields.
func ParseEvent(rec []byte, v *EventView) error {
	*v = EventView{}
	fieldsStart := -1
	for b := rec; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ErrMalformedEvent
		}
		off := len(rec) - len(b)
		b = b[n:]
		switch {
		case num == evType && typ == protowire.BytesType:
			v.Type, n = protowire.ConsumeBytes(b)
		case num == evTime && typ == protowire.VarintType:
			var u uint64
			u, n = protowire.ConsumeVarint(b)
			v.TimeUnixNano = int64(u)
		case num == evAlert && typ == protowire.VarintType:
			var u uint64
			u, n = protowire.ConsumeVarint(b)
			v.Alert = u != 0
		case num == evSeverity && typ == protowire.VarintType:
			var u uint64
			u, n = protowire.ConsumeVarint(b)
			u = uint64(uint32(u)) // severity is a uint32: read it as protobuf does
			if u > math.MaxUint8 {
				u = uint64(SevDebug)
			}
			v.Severity = Severity(u)
		case num == evField && typ == protowire.BytesType:
			if fieldsStart < 0 {
				fieldsStart = off
			}
			v.nfields++
			n = protowire.ConsumeFieldValue(num, typ, b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return ErrMalformedEvent
		}
		b = b[n:]
	}
	if fieldsStart >= 0 {
		v.fields = rec[fieldsStart:]
	}
	return nil
}
