// Package ingest is the wire contract of inventory reporting between
// vigil-host and vigil-server: a host posts its inventory digest
// (DigestReport); when the server answers that it does not store that
// inventory (DigestAnswer), the host uploads it in full, gzip-compressed
// (Upload). DecodeUpload is the server's strict, size-bounded decoder.
package ingest

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/vuln/inventory"
	"github.com/vigil-hids/vigil/vuln/version"
)

// Limits of one upload. The compressed limit is what the HTTP handler
// reads; the decompressed one stops a gzip bomb.
const (
	DefaultMaxUpload    = 8 << 20  // compressed bytes
	DefaultMaxInventory = 64 << 20 // decompressed bytes
	// MaxPackages bounds the packages of one inventory; a real host has
	// a few thousand.
	MaxPackages = 200_000
	maxField    = 1024 // bytes of a package name, version, arch or source
)

// Sentinel errors, matched with errors.Is. Every refusal wraps one of
// them and names the field or limit.
var (
	// ErrInvalid means the request is malformed: bad JSON, a bad host
	// name or digest, an unknown ecosystem, an empty package field.
	ErrInvalid = errors.New("ingest: invalid")
	// ErrDigestMismatch means the inventory does not hash to the digest
	// the host claimed; nothing is stored.
	ErrDigestMismatch = errors.New("ingest: digest mismatch")
	// ErrTooLarge means an upload exceeded a size limit.
	ErrTooLarge = errors.New("ingest: too large")
)

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// DigestReport is the body of POST /v1/vuln/digest: the host's current
// inventory digest.
type DigestReport struct {
	Host   string `json:"host"`
	Digest string `json:"digest"`
}

// DigestAnswer says whether the server stores that inventory. When it
// does not, the host uploads it in full.
type DigestAnswer struct {
	Known bool `json:"known"`
}

// Upload is the body of POST /v1/vuln/inventory (gzip-compressed): the
// host, the digest it computed and the full inventory.
type Upload struct {
	Host      string              `json:"host"`
	Digest    string              `json:"digest"`
	Kernel    string              `json:"kernel,omitempty"`
	Inventory inventory.Inventory `json:"inventory"`
}

// UploadAnswer says what an upload did.
type UploadAnswer struct {
	Digest string `json:"digest"`
	// Added is false when the inventory was already stored (another
	// host uploaded it meanwhile).
	Added    bool `json:"added"`
	Packages int  `json:"packages"`
}

// Check checks a host name and digest as a host reports them.
func (d DigestReport) Check() error {
	var errs []error
	if !api.ValidName(d.Host) {
		errs = append(errs, fmt.Errorf("%w: host %q is not a valid host name", ErrInvalid, d.Host))
	}
	if !digestRE.MatchString(d.Digest) {
		errs = append(errs, fmt.Errorf("%w: digest must be sha256: and 64 lowercase hex digits (got %q)", ErrInvalid, trunc(d.Digest)))
	}
	return errors.Join(errs...)
}

// DecodeDigest reads a DigestReport strictly: unknown fields and
// trailing data are errors.
func DecodeDigest(r io.Reader) (DigestReport, error) {
	var d DigestReport
	if err := strictJSON(r, &d); err != nil {
		return d, err
	}
	return d, d.Check()
}

// DecodeUpload reads an upload from r, gunzipping it when gzipped, with
// at most maxInventory bytes after decompression (0: the default). It
// checks the host name, the digest's form, the ecosystem and every
// package's fields; it does not compare the digest (Ingest does, after
// canonicalizing).
func DecodeUpload(r io.Reader, gzipped bool, maxInventory int64) (*Upload, error) {
	if maxInventory <= 0 {
		maxInventory = DefaultMaxInventory
	}
	if gzipped {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("%w: body is not gzip: %v", ErrInvalid, err)
		}
		defer zr.Close()
		r = zr
	}
	data, err := io.ReadAll(io.LimitReader(r, maxInventory+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading the inventory: %v", ErrInvalid, err)
	}
	if int64(len(data)) > maxInventory {
		return nil, fmt.Errorf("%w: inventory is larger than %d bytes decompressed", ErrTooLarge, maxInventory)
	}
	return ParseUpload(data)
}

// ParseUpload decodes an upload already decompressed (and bounded by the
// caller) strictly, and checks it as DecodeUpload does.
func ParseUpload(data []byte) (*Upload, error) {
	var u Upload
	if err := strictJSON(bytes.NewReader(data), &u); err != nil {
		return nil, err
	}
	if err := u.Check(); err != nil {
		return nil, err
	}
	return &u, nil
}

// Check validates an upload's fields without computing its digest.
func (u *Upload) Check() error {
	errs := []error{DigestReport{Host: u.Host, Digest: u.Digest}.Check()}
	inv := &u.Inventory
	kind := inv.Kind()
	if kind == version.Unknown {
		errs = append(errs, fmt.Errorf("%w: inventory.ecosystem %q is unknown (known: dpkg, rpm, apk)", ErrInvalid, trunc(inv.Ecosystem)))
	}
	if len(inv.Packages) > MaxPackages {
		errs = append(errs, fmt.Errorf("%w: inventory has %d packages, more than %d", ErrTooLarge, len(inv.Packages), MaxPackages))
	}
	bad := 0
	for i, p := range inv.Packages {
		var why string
		switch {
		case p.Name == "":
			why = "name is empty"
		case p.Version == "":
			why = "version is empty"
		case len(p.Name) > maxField || len(p.Version) > maxField || len(p.Arch) > maxField ||
			len(p.Source) > maxField || len(p.SourceVersion) > maxField:
			why = fmt.Sprintf("a field is longer than %d bytes", maxField)
		default:
			continue
		}
		if bad++; bad <= 5 {
			errs = append(errs, fmt.Errorf("%w: inventory.packages[%d] (%q): %s", ErrInvalid, i, trunc(p.Name), why))
		}
	}
	if bad > 5 {
		errs = append(errs, fmt.Errorf("%w: %d more bad packages", ErrInvalid, bad-5))
	}
	return errors.Join(errs...)
}

func strictJSON(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: malformed JSON: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: malformed JSON: data after the object", ErrInvalid)
	}
	return nil
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
