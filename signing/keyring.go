package signing

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"aead.dev/minisign"
)

// Keyring is the root-signed list of current release keys. Hosts pin only
// the root keys; release keys rotate by publishing a new keyring.
type Keyring struct {
	// Serial increases with every new keyring.
	Serial uint64 `json:"serial"`
	// Expires bounds how long a keyring, and a release key it lists, is
	// believed; an expired keyring is refused.
	Expires time.Time `json:"expires"`
	// Threshold is how many distinct release keys must sign a release.
	Threshold int `json:"threshold"`
	// Keys are minisign public keys (base64 lines).
	Keys []string `json:"keys"`
}

// SignedKeyring is a keyring with root signatures, the keyring.json file.
type SignedKeyring struct {
	Keyring    Keyring     `json:"keyring"`
	Signatures []Signature `json:"signatures"`
}

// Validate checks the keyring's fields; it is pure.
func (k Keyring) Validate() error {
	var errs []error
	if k.Expires.IsZero() {
		errs = append(errs, errors.New("keyring.expires must be set (got zero time)"))
	}
	if _, err := (TrustFile{Threshold: k.Threshold, Keys: k.Keys}).Trust(); err != nil {
		errs = append(errs, fmt.Errorf("keyring.keys/keyring.threshold: %w", err))
	}
	return errors.Join(errs...)
}

// Body returns the canonical bytes that root signatures cover.
func (k Keyring) Body() ([]byte, error) {
	b, err := canonical(k)
	if err != nil {
		return nil, fmt.Errorf("encoding keyring: %w", err)
	}
	return b, nil
}

// Sign adds a root key's signature, replacing an older one by the same key.
func (s *SignedKeyring) Sign(root minisign.PrivateKey) error {
	if err := s.Keyring.Validate(); err != nil {
		return err
	}
	body, err := s.Keyring.Body()
	if err != nil {
		return err
	}
	s.Signatures = addSignature(s.Signatures, root, body, fmt.Sprintf("vigil keyring serial %d", s.Keyring.Serial))
	return nil
}

// Marshal encodes the signed keyring as keyring.json.
func (s SignedKeyring) Marshal() ([]byte, error) {
	b, err := canonical(s)
	if err != nil {
		return nil, fmt.Errorf("encoding signed keyring: %w", err)
	}
	return append(b, '\n'), nil
}

// ParseKeyring reads a signed keyring strictly; it does not check signatures.
func ParseKeyring(r io.Reader) (SignedKeyring, error) {
	var s SignedKeyring
	data, err := io.ReadAll(io.LimitReader(r, maxManifest+1))
	if err != nil {
		return s, fmt.Errorf("reading keyring: %w", err)
	}
	if len(data) > maxManifest {
		return s, fmt.Errorf("%w: keyring larger than %d bytes", ErrMalformed, maxManifest)
	}
	if err := decodeStrict(bytes.NewReader(data), &s); err != nil {
		return s, fmt.Errorf("%w: keyring: %v", ErrMalformed, err)
	}
	if err := s.Keyring.Validate(); err != nil {
		return s, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return s, nil
}

// VerifyKeyring checks the keyring against the pinned root keys and their
// threshold, its expiry at now and that its serial is at least minSerial
// (the highest the caller accepted before; 0 when it has none), and returns
// the release keys it lists.
func VerifyKeyring(s SignedKeyring, roots Trust, now time.Time, minSerial uint64) (Trust, error) {
	k := s.Keyring
	if now.IsZero() {
		return Trust{}, errNoClock
	}
	body, err := k.Body()
	if err != nil {
		return Trust{}, err
	}
	if _, err := countSigners(body, s.Signatures, roots); err != nil {
		return Trust{}, fmt.Errorf("keyring serial %d refused: %w: %w", k.Serial, ErrKeyringUnsigned, err)
	}
	if !now.Before(k.Expires) {
		return Trust{}, fmt.Errorf("keyring serial %d refused: %w: expired %s, now %s", k.Serial, ErrKeyringExpired,
			k.Expires.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if k.Serial < minSerial {
		return Trust{}, fmt.Errorf("keyring serial %d refused: %w: already accepted serial %d", k.Serial, ErrKeyringRollback, minSerial)
	}
	t, err := TrustFile{Threshold: k.Threshold, Keys: k.Keys}.Trust()
	if err != nil {
		return Trust{}, fmt.Errorf("keyring serial %d refused: %w", k.Serial, err)
	}
	return t, nil
}

// VerifyWithKeyring resolves the current release keys from a root-signed
// keyring first and then verifies the release with them.
func VerifyWithKeyring(s SignedManifest, binary io.Reader, kr SignedKeyring, roots Trust, want Expect) (Verified, error) {
	release, err := VerifyKeyring(kr, roots, want.Now, want.MinKeyringSerial)
	if err != nil {
		return Verified{}, err
	}
	return Verify(s, binary, release, want)
}
