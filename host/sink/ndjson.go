package sink

import (
	"strconv"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/vigil-hids/vigil/sdk"
)

// Encoder turns packed event records into NDJSON lines, one JSON object per
// event:
//
//	{"ts":"2026-11-25T20:01:02.123456789Z","host":"h1","plugin":"procmon","plugin_version":"0.1.0","type":"exec","alert":false,"severity":"info","fields":{"pid":123,"exe":"/usr/bin/ls"}}
//
// It writes the JSON by hand into the caller's buffer and allocates nothing
// per event. Strings are escaped as JSON requires; invalid UTF-8 becomes
// U+FFFD, so every line is valid JSON. An Encoder is not safe for
// concurrent use.
type Encoder struct {
	host    string
	plugin  string
	version string
	mid     []byte // `","host":"h1","plugin":...,"type":`
	v       sdk.EventView
	// The timestamp up to the seconds' dot, cached: events of one batch
	// mostly fall in the same second.
	sec     int64
	secText []byte
}

// NewEncoder returns an encoder that stamps lines with the host name.
func NewEncoder(host string) *Encoder {
	e := &Encoder{host: host}
	e.rebuild()
	return e
}

// SetSource sets the plugin name and version written on the following
// lines. It allocates only when they change.
func (e *Encoder) SetSource(plugin, version string) {
	if plugin == e.plugin && version == e.version && e.mid != nil {
		return
	}
	e.plugin, e.version = plugin, version
	e.rebuild()
}

func (e *Encoder) rebuild() {
	m := append(e.mid[:0], `","host":`...)
	m = appendJSONString(m, bytesOf(e.host))
	m = append(m, `,"plugin":`...)
	m = appendJSONString(m, bytesOf(e.plugin))
	m = append(m, `,"plugin_version":`...)
	m = appendJSONString(m, bytesOf(e.version))
	e.mid = append(m, `,"type":`...)
}

// Timestamps are RFC 3339 in UTC with all nine digits of the nanoseconds,
// so lines sort and align: 2026-11-25T20:01:02.123456789Z.
const secLayout = "2006-01-02T15:04:05."

func (e *Encoder) appendTime(dst []byte, unixNano int64) []byte {
	t := time.Unix(0, unixNano).UTC()
	if sec := t.Unix(); sec != e.sec || e.secText == nil {
		e.sec = sec
		e.secText = t.AppendFormat(e.secText[:0], secLayout)
	}
	dst = append(dst, e.secText...)
	ns := t.Nanosecond()
	var d [9]byte
	for i := 8; i >= 0; i-- {
		d[i] = byte('0' + ns%10)
		ns /= 10
	}
	dst = append(dst, d[:]...)
	return append(dst, 'Z')
}

// AppendLine appends the NDJSON line for one record (as returned by
// sdk.NextRecord), newline included. If the record does not decode it
// returns dst unchanged and an error wrapping sdk.ErrMalformedEvent.
func (e *Encoder) AppendLine(dst, rec []byte) ([]byte, error) {
	if err := sdk.ParseEvent(rec, &e.v); err != nil {
		return dst, err
	}
	start := len(dst)
	v := &e.v
	dst = append(dst, `{"ts":"`...)
	dst = e.appendTime(dst, v.TimeUnixNano)
	dst = append(dst, e.mid...)
	dst = appendJSONString(dst, v.Type)
	if v.Alert {
		dst = append(dst, `,"alert":true,"severity":"`...)
	} else {
		dst = append(dst, `,"alert":false,"severity":"`...)
	}
	dst = append(dst, v.Severity.String()...)
	dst = append(dst, `","fields":{`...)
	it := v.Fields()
	first := true
	for it.Next() {
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = appendJSONString(dst, it.Key)
		dst = append(dst, ':')
		switch it.Kind {
		case sdk.KindInt:
			dst = strconv.AppendInt(dst, it.Int, 10)
		case sdk.KindBool:
			dst = strconv.AppendBool(dst, it.Int != 0)
		default:
			dst = appendJSONString(dst, it.Str)
		}
	}
	if err := it.Err(); err != nil {
		return dst[:start], err
	}
	return append(dst, "}}\n"...), nil
}

// bytesOf views s as bytes without copying; the result must not be
// modified.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a quoted JSON string. Control characters,
// quote and backslash are escaped, as are U+2028 and U+2029 (which some
// JavaScript consumers treat as line ends); each byte of invalid UTF-8
// becomes \ufffd.
func appendJSONString(dst, s []byte) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
