package signing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"time"

	"aead.dev/minisign"
	"github.com/coreos/go-semver/semver"
)

// Manifest is the signed description of one release binary. Its canonical
// encoding (compact JSON, fields in this order) is what every key signs.
type Manifest struct {
	Plugin         string    `json:"plugin"`
	Version        string    `json:"version"`
	OS             string    `json:"os"`
	Arch           string    `json:"arch"`
	Length         int64     `json:"length"`
	SHA256         string    `json:"sha256"`
	Expires        time.Time `json:"expires"`
	MinHostVersion string    `json:"min_host_version"`
	// Rollback allows installing this version over a newer running one.
	// It is signed like every other field.
	Rollback bool `json:"rollback,omitempty"`
}

// SignedManifest is a manifest with its detached signatures, the
// manifest.json of a bundle.
type SignedManifest struct {
	Manifest   Manifest    `json:"manifest"`
	Signatures []Signature `json:"signatures"`
}

var (
	namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)
	hexSHA256   = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Validate checks the manifest's fields; it is pure.
func (m Manifest) Validate() error {
	var errs []error
	if !namePattern.MatchString(m.Plugin) {
		errs = append(errs, fmt.Errorf("manifest.plugin must match %s (got %q)", namePattern, m.Plugin))
	}
	if _, err := semver.NewVersion(m.Version); err != nil {
		errs = append(errs, fmt.Errorf("manifest.version must be semver MAJOR.MINOR.PATCH (got %q)", m.Version))
	}
	if !namePattern.MatchString(m.OS) {
		errs = append(errs, fmt.Errorf("manifest.os must match %s (got %q)", namePattern, m.OS))
	}
	if !namePattern.MatchString(m.Arch) {
		errs = append(errs, fmt.Errorf("manifest.arch must match %s (got %q)", namePattern, m.Arch))
	}
	if m.Length < 1 {
		errs = append(errs, fmt.Errorf("manifest.length must be at least 1 (got %d)", m.Length))
	}
	if !hexSHA256.MatchString(m.SHA256) {
		errs = append(errs, fmt.Errorf("manifest.sha256 must be 64 lowercase hex digits (got %q)", m.SHA256))
	}
	if m.Expires.IsZero() {
		errs = append(errs, errors.New("manifest.expires must be set (got zero time)"))
	}
	if _, err := semver.NewVersion(m.MinHostVersion); err != nil {
		errs = append(errs, fmt.Errorf("manifest.min_host_version must be semver MAJOR.MINOR.PATCH (got %q)", m.MinHostVersion))
	}
	return errors.Join(errs...)
}

// Body returns the canonical bytes that signatures cover.
func (m Manifest) Body() ([]byte, error) {
	b, err := canonical(m)
	if err != nil {
		return nil, fmt.Errorf("encoding manifest: %w", err)
	}
	return b, nil
}

// trustedComment names the release inside each minisign signature so that
// `minisign -V` prints what was signed.
func (m Manifest) trustedComment() string {
	return fmt.Sprintf("vigil release %s %s %s/%s sha256:%s", m.Plugin, m.Version, m.OS, m.Arch, m.SHA256)
}

// Sign adds sec's signature over the canonical body, replacing an older
// signature by the same key.
func (s *SignedManifest) Sign(sec minisign.PrivateKey) error {
	if err := s.Manifest.Validate(); err != nil {
		return err
	}
	body, err := s.Manifest.Body()
	if err != nil {
		return err
	}
	s.Signatures = addSignature(s.Signatures, sec, body, s.Manifest.trustedComment())
	return nil
}

// Marshal encodes the signed manifest as manifest.json (indented; the
// signatures cover the canonical body, not this layout).
func (s SignedManifest) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding signed manifest: %w", err)
	}
	return append(b, '\n'), nil
}

// maxManifest bounds what ParseManifest reads from an untrusted mirror.
const maxManifest = 1 << 20

// ParseManifest reads a signed manifest strictly. It does not check
// signatures; call Verify.
func ParseManifest(r io.Reader) (SignedManifest, error) {
	var s SignedManifest
	data, err := io.ReadAll(io.LimitReader(r, maxManifest+1))
	if err != nil {
		return s, fmt.Errorf("reading manifest: %w", err)
	}
	if len(data) > maxManifest {
		return s, fmt.Errorf("%w: manifest larger than %d bytes", ErrMalformed, maxManifest)
	}
	if err := decodeStrict(bytes.NewReader(data), &s); err != nil {
		return s, fmt.Errorf("%w: manifest: %v", ErrMalformed, err)
	}
	if err := s.Manifest.Validate(); err != nil {
		return s, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return s, nil
}
