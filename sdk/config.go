package sdk

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Config keys are checked against `vigil` struct tags before the plugin's
// own Validate runs, so the common rules need no code and also appear in the
// JSON Schema the plugin publishes (the server checks configs with it before
// anything is written):
//
//	QueueSize int    `json:"queue_size" vigil:"min=1024,max=1048576" desc:"events buffered"`
//	Mode      string `json:"mode" vigil:"enum=fast|safe"`
//	Interval  Duration `json:"interval" vigil:"min=1s,max=1h"`

// DecodeConfig decodes the JSON document raw strictly over cfg, which holds
// the defaults: keys that are absent keep their default, unknown keys are
// errors. It then checks the tag rules and calls cfg.Validate. prefix (the
// plugin name) starts every key named in an error, e.g. "procmon.queue_size".
// An empty or "null" document keeps every default.
func DecodeConfig(prefix string, raw []byte, cfg Config) error {
	if t := bytes.TrimSpace(raw); len(t) > 0 && !bytes.Equal(t, []byte("null")) {
		dec := json.NewDecoder(bytes.NewReader(t))
		dec.DisallowUnknownFields()
		if err := dec.Decode(cfg); err != nil {
			return fmt.Errorf("%s: decoding config: %w", prefix, explainJSON(err))
		}
		if _, err := dec.Token(); err != io.EOF {
			return fmt.Errorf("%s: decoding config: trailing data after the JSON object", prefix)
		}
	}
	errs := checkTags(prefix, reflect.ValueOf(cfg))
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func explainJSON(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field == "" { // the document itself, e.g. a list
			return fmt.Errorf("the config must be %s (got %s)", jsonKind(te.Type), te.Value)
		}
		return fmt.Errorf("key %q must be %s (got %s)", te.Field, jsonKind(te.Type), te.Value)
	}
	if s := err.Error(); strings.HasPrefix(s, "json: unknown field ") {
		return fmt.Errorf("unknown key %s", strings.TrimPrefix(s, "json: unknown field "))
	}
	return err
}

func jsonKind(t reflect.Type) string {
	if t == durationType {
		return "a duration such as \"5s\""
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "a list"
	default:
		return "an object"
	}
}

// Duration is a time.Duration written in config as a Go duration string
// ("250ms", "5s", "1h"); a bare number is taken as seconds.
type Duration time.Duration

var durationType = reflect.TypeOf(Duration(0))

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err2 := json.Unmarshal(b, &secs); err2 != nil {
			return &json.UnmarshalTypeError{Value: string(b), Type: durationType}
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		// A type error, not a plain one, so that the decoder names the key.
		return &json.UnmarshalTypeError{Value: strconv.Quote(s), Type: durationType}
	}
	*d = Duration(v)
	return nil
}

type rule struct {
	min, max string
	enum     []string
}

func parseRule(tag string) (rule, error) {
	var r rule
	for _, part := range strings.Split(tag, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		switch {
		case part == "":
		case ok && k == "min":
			r.min = v
		case ok && k == "max":
			r.max = v
		case ok && k == "enum":
			r.enum = strings.Split(v, "|")
		default:
			return r, fmt.Errorf("sdk: bad vigil tag %q", tag)
		}
	}
	return r, nil
}

func jsonName(f reflect.StructField) (string, bool) {
	tag := f.Tag.Get("json")
	if tag == "-" || !f.IsExported() {
		return "", false
	}
	name, _, _ := strings.Cut(tag, ",")
	if name == "" {
		name = f.Name
	}
	return name, true
}

// checkTags walks a config struct and checks every field's vigil tag.
func checkTags(path string, v reflect.Value) []error {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return nil
	}
	var errs []error
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		name, ok := jsonName(sf)
		if !ok {
			continue
		}
		key := path + "." + name
		fv := v.Field(i)
		if tag, ok := sf.Tag.Lookup("vigil"); ok {
			r, err := parseRule(tag)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if err := r.check(key, fv); err != nil {
				errs = append(errs, err)
			}
		}
		if fv.Kind() == reflect.Struct && fv.Type() != durationType {
			errs = append(errs, checkTags(key, fv)...)
		}
	}
	return errs
}

func (r rule) check(key string, v reflect.Value) error {
	if len(r.enum) > 0 {
		s := fmt.Sprint(v.Interface())
		for _, e := range r.enum {
			if s == e {
				return nil
			}
		}
		return fmt.Errorf("%s must be one of %s (got %q)", key, strings.Join(r.enum, ", "), s)
	}
	if r.min == "" && r.max == "" {
		return nil
	}
	val, lo, hi, show, err := r.bounds(v)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if (r.min != "" && val < lo) || (r.max != "" && val > hi) {
		switch {
		case r.min != "" && r.max != "":
			return fmt.Errorf("%s must be between %s and %s (got %s)", key, r.min, r.max, show)
		case r.min != "":
			return fmt.Errorf("%s must be at least %s (got %s)", key, r.min, show)
		default:
			return fmt.Errorf("%s must be at most %s (got %s)", key, r.max, show)
		}
	}
	return nil
}

// bounds returns the value and limits as float64 (durations in
// nanoseconds, strings and lists by length) and the value as shown.
func (r rule) bounds(v reflect.Value) (val, lo, hi float64, show string, err error) {
	parse := strconv.ParseFloat
	if v.Type() == durationType {
		d := time.Duration(v.Int())
		val, show = float64(d), d.String()
		parse = func(s string, _ int) (float64, error) {
			x, err := time.ParseDuration(s)
			return float64(x), err
		}
	} else {
		switch v.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			val, show = float64(v.Int()), strconv.FormatInt(v.Int(), 10)
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			val, show = float64(v.Uint()), strconv.FormatUint(v.Uint(), 10)
		case reflect.Float32, reflect.Float64:
			val, show = v.Float(), strconv.FormatFloat(v.Float(), 'g', -1, 64)
		case reflect.String, reflect.Slice, reflect.Map:
			val, show = float64(v.Len()), "length "+strconv.Itoa(v.Len())
		default:
			return 0, 0, 0, "", fmt.Errorf("sdk: min/max tag on unsupported kind %s", v.Kind())
		}
	}
	if r.min != "" {
		if lo, err = parse(r.min, 64); err != nil {
			return 0, 0, 0, "", fmt.Errorf("sdk: bad min %q: %w", r.min, err)
		}
	}
	if r.max != "" {
		if hi, err = parse(r.max, 64); err != nil {
			return 0, 0, 0, "", fmt.Errorf("sdk: bad max %q: %w", r.max, err)
		}
	}
	return val, lo, hi, show, nil
}

// Schema returns a JSON Schema (a draft 2020-12 subset: type, properties,
// default, description, minimum, maximum, minLength/maxLength, enum and
// additionalProperties false) for a config, with its defaults.
func Schema(cfg Config) ([]byte, error) {
	s, err := schemaOf(reflect.ValueOf(cfg))
	if err != nil {
		return nil, err
	}
	s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	return json.Marshal(s)
}

func schemaOf(v reflect.Value) (map[string]any, error) {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v = reflect.New(v.Type().Elem())
		}
		v = v.Elem()
	}
	t := v.Type()
	s := map[string]any{}
	if t == durationType {
		s["type"] = "string"
		s["format"] = "duration"
		return s, nil
	}
	switch t.Kind() {
	case reflect.Struct:
		props := map[string]any{}
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			name, ok := jsonName(sf)
			if !ok {
				continue
			}
			ps, err := schemaOf(v.Field(i))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if d := sf.Tag.Get("desc"); d != "" {
				ps["description"] = d
			}
			if tag, ok := sf.Tag.Lookup("vigil"); ok {
				r, err := parseRule(tag)
				if err != nil {
					return nil, err
				}
				r.annotate(ps, v.Field(i))
			}
			if def, err := json.Marshal(v.Field(i).Interface()); err == nil {
				ps["default"] = json.RawMessage(def)
			}
			props[name] = ps
		}
		s["type"] = "object"
		s["properties"] = props
		s["additionalProperties"] = false
	case reflect.Bool:
		s["type"] = "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		s["type"] = "integer"
	case reflect.Float32, reflect.Float64:
		s["type"] = "number"
	case reflect.String:
		s["type"] = "string"
	case reflect.Slice, reflect.Array:
		s["type"] = "array"
		items, err := schemaOf(reflect.New(t.Elem()).Elem())
		if err != nil {
			return nil, err
		}
		s["items"] = items
	case reflect.Map:
		s["type"] = "object"
	default:
		return nil, fmt.Errorf("sdk: unsupported config kind %s", t.Kind())
	}
	return s, nil
}

func (r rule) annotate(s map[string]any, v reflect.Value) {
	if len(r.enum) > 0 {
		s["enum"] = r.enum
		return
	}
	num := func(x string) any {
		if f, err := strconv.ParseFloat(x, 64); err == nil {
			return f
		}
		return x
	}
	switch {
	case v.Type() == durationType:
		if r.min != "" {
			s["x-minimum-duration"] = r.min
		}
		if r.max != "" {
			s["x-maximum-duration"] = r.max
		}
	case v.Kind() == reflect.String:
		if r.min != "" {
			s["minLength"] = num(r.min)
		}
		if r.max != "" {
			s["maxLength"] = num(r.max)
		}
	case v.Kind() == reflect.Slice:
		if r.min != "" {
			s["minItems"] = num(r.min)
		}
		if r.max != "" {
			s["maxItems"] = num(r.max)
		}
	default:
		if r.min != "" {
			s["minimum"] = num(r.min)
		}
		if r.max != "" {
			s["maximum"] = num(r.max)
		}
	}
}
