package signing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"aead.dev/minisign"
)

// TrustFile is the JSON a host pins: public keys (minisign base64 lines)
// and how many distinct ones must sign.
type TrustFile struct {
	Threshold int      `json:"threshold"`
	Keys      []string `json:"keys"`
}

// Trust is a parsed, validated set of public keys with a threshold.
type Trust struct {
	Threshold int
	keys      map[uint64]minisign.PublicKey
}

// NewTrust builds a Trust from public keys. Duplicate keys count once; two
// different keys with the same id are refused because the id picks the key.
func NewTrust(threshold int, keys ...minisign.PublicKey) (Trust, error) {
	t := Trust{Threshold: threshold, keys: make(map[uint64]minisign.PublicKey, len(keys))}
	var errs []error
	for _, k := range keys {
		if old, ok := t.keys[k.ID()]; ok && !old.Equal(k) {
			errs = append(errs, fmt.Errorf("%w: two different keys share id %s", ErrMalformed, KeyID(k.ID())))
		}
		t.keys[k.ID()] = k
	}
	if threshold < 1 || threshold > len(t.keys) {
		errs = append(errs, fmt.Errorf("%w: threshold must be between 1 and %d distinct keys (got %d)", ErrMalformed, len(t.keys), threshold))
	}
	return t, errors.Join(errs...)
}

// KeyIDs lists the trusted key ids.
func (t Trust) KeyIDs() []string {
	ids := make([]string, 0, len(t.keys))
	for id := range t.keys {
		ids = append(ids, KeyID(id))
	}
	slices.Sort(ids)
	return ids
}

// Keys returns the trusted public keys in the trust file's form.
func (t Trust) Keys() []string {
	out := make([]string, 0, len(t.keys))
	for _, k := range t.keys {
		out = append(out, k.String())
	}
	slices.Sort(out)
	return out
}

// ParseTrust reads a trust file strictly (unknown fields are errors).
func ParseTrust(r io.Reader) (Trust, error) {
	var f TrustFile
	if err := decodeStrict(r, &f); err != nil {
		return Trust{}, fmt.Errorf("%w: trust file: %v", ErrMalformed, err)
	}
	return f.Trust()
}

// Trust validates f and returns the parsed key set.
func (f TrustFile) Trust() (Trust, error) {
	keys := make([]minisign.PublicKey, 0, len(f.Keys))
	var errs []error
	for i, s := range f.Keys {
		k, err := ParsePublicKey([]byte(s))
		if err != nil {
			errs = append(errs, fmt.Errorf("keys[%d]: %w", i, err))
			continue
		}
		keys = append(keys, k)
	}
	t, err := NewTrust(f.Threshold, keys...)
	return t, errors.Join(append(errs, err)...)
}

// decodeStrict decodes exactly one JSON value and refuses unknown fields.
func decodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// canonical encodes v as compact JSON without HTML escaping: the exact
// bytes that are signed.
func canonical(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
