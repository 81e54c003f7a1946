// Package desired parses and checks desired-state documents before the
// server writes them: strict JSON or YAML decoding into api.DesiredState,
// log levels, one-shot tasks, each plugin's config checked by the plugin's
// own rules, and the size of the etcd request the write will make.
package desired

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/vigil-hids/vigil/api"
	"go.yaml.in/yaml/v3"
)

// ErrInvalid marks every error that means the document was refused; nothing
// was written.
var ErrInvalid = errors.New("desired: invalid document")

// MaxInput is the largest document Parse reads; anything larger cannot fit
// in an etcd request anyway.
const MaxInput = 8 << 20

// Parse decodes a desired-state document written as JSON (it starts with
// '{' and a quoted key, see isJSON) or YAML. Decoding is strict: unknown keys,
// duplicate keys, trailing data and several YAML documents are errors.
func Parse(data []byte) (api.DesiredState, error) {
	var st api.DesiredState
	if len(data) > MaxInput {
		return st, fmt.Errorf("%w: document is %d bytes, more than %d", ErrInvalid, len(data), MaxInput)
	}
	t := bytes.TrimSpace(data)
	if len(t) == 0 {
		return st, fmt.Errorf("%w: empty document", ErrInvalid)
	}
	if isJSON(t) {
		if err := decodeJSON(t, &st); err != nil {
			return api.DesiredState{}, fmt.Errorf("%w: JSON: %w", ErrInvalid, err)
		}
		return st, nil
	}
	js, err := yamlToJSON(data)
	if err != nil {
		return st, fmt.Errorf("%w: YAML: %w", ErrInvalid, err)
	}
	if err := decodeJSON(js, &st); err != nil {
		return api.DesiredState{}, fmt.Errorf("%w: YAML: %w", ErrInvalid, err)
	}
	return st, nil
}

// isJSON tells JSON from YAML: a JSON document starts with '{' followed by
// a quoted key or '}'. A YAML flow mapping ({log_level: info}) has an
// unquoted key and is read as YAML; a broken JSON document that YAML would
// happen to accept ({"a": 1,}) is still refused as JSON.
func isJSON(t []byte) bool {
	if len(t) == 0 || t[0] != '{' {
		return false
	}
	rest := bytes.TrimLeft(t[1:], " \t\r\n")
	return len(rest) == 0 || rest[0] == '"' || rest[0] == '}'
}

func decodeJSON(data []byte, st *api.DesiredState) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(st); err != nil {
		return explainJSON(data, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the document")
	}
	return nil
}

func explainJSON(data []byte, err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line, col := position(data, se.Offset)
		return fmt.Errorf("line %d column %d: %w", line, col, err)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("key %q must be a %s (got %s)", te.Field, te.Type, te.Value)
	}
	if s := err.Error(); strings.HasPrefix(s, "json: unknown field ") {
		return fmt.Errorf("unknown key %s", strings.TrimPrefix(s, "json: unknown field "))
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("document ends early (unclosed object or string)")
	}
	return err
}

func position(data []byte, off int64) (line, col int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	line = 1 + bytes.Count(data[:off], []byte("\n"))
	col = int(off) - bytes.LastIndexByte(data[:off], '\n') - 1
	return line, col + 1
}

// yamlToJSON converts one YAML document into JSON so that a single strict
// JSON decoder (with the api types' json tags) decides what is valid.
func yamlToJSON(data []byte) ([]byte, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc any
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, errors.New("empty document")
		}
		return nil, err
	}
	var extra any
	if err := dec.Decode(&extra); err != io.EOF {
		return nil, errors.New("more than one document (---) in the input")
	}
	if _, ok := doc.(map[string]any); !ok {
		return nil, fmt.Errorf("the document must be a mapping (got %s)", kindOf(doc))
	}
	v, err := jsonable(doc, "")
	if err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// jsonable turns what yaml.v3 decodes into values encoding/json accepts.
func jsonable(v any, path string) (any, error) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			c, err := jsonable(e, join(path, k))
			if err != nil {
				return nil, err
			}
			x[k] = c
		}
		return x, nil
	case map[any]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			ks, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("key %v under %q must be a string", k, path)
			}
			c, err := jsonable(e, join(path, ks))
			if err != nil {
				return nil, err
			}
			out[ks] = c
		}
		return out, nil
	case []any:
		for i, e := range x {
			c, err := jsonable(e, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			x[i] = c
		}
		return x, nil
	case float64:
		if x != x || x > 1.7e308 || x < -1.7e308 {
			return nil, fmt.Errorf("key %q: %v is not a JSON number", path, x)
		}
		return x, nil
	case nil, string, bool, int, int64, uint64:
		return x, nil
	default:
		// Timestamps, binary and other YAML-only types have no JSON form.
		return nil, fmt.Errorf("key %q: %s values are not allowed, quote it as a string", path, kindOf(v))
	}
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func kindOf(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "a list"
	case string:
		return "a string"
	case map[string]any, map[any]any:
		return "a mapping"
	}
	return fmt.Sprintf("%T", v)
}
