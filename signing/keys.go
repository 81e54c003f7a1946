package signing

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"

	"aead.dev/minisign"
)

// KeyID formats a minisign key id the way minisign prints it: 16 uppercase hex digits.
func KeyID(id uint64) string { return fmt.Sprintf("%016X", id) }

// parseKeyID is the inverse of KeyID.
func parseKeyID(s string) (uint64, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("%w: key id %q is not 16 hex digits", ErrMalformed, s)
	}
	id, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: key id %q is not 16 hex digits", ErrMalformed, s)
	}
	return id, nil
}

// GenerateKey makes a new minisign key pair from random (crypto/rand when nil).
func GenerateKey(random io.Reader) (minisign.PublicKey, minisign.PrivateKey, error) {
	pub, sec, err := minisign.GenerateKey(random)
	if err != nil {
		return pub, sec, fmt.Errorf("generating key: %w", err)
	}
	return pub, sec, nil
}

// MarshalPublicKey returns the key as a minisign .pub file.
func MarshalPublicKey(pub minisign.PublicKey) []byte {
	return []byte("untrusted comment: minisign public key " + KeyID(pub.ID()) + "\n" + pub.String() + "\n")
}

// ParsePublicKey reads a minisign public key: a .pub file or its base64 line alone.
func ParsePublicKey(data []byte) (minisign.PublicKey, error) {
	var pub minisign.PublicKey
	text := strings.TrimSpace(string(data))
	if comment, key, ok := strings.Cut(text, "\n"); ok && strings.HasPrefix(comment, "untrusted comment:") {
		text = strings.TrimSpace(key)
	}
	if err := pub.UnmarshalText([]byte(text)); err != nil {
		return pub, fmt.Errorf("%w: public key: %v", ErrMalformed, err)
	}
	return pub, nil
}

// MarshalSecretKey returns the key as a minisign secret key file, encrypted
// with scrypt (minisign's parameters) when password is not empty. Like
// `minisign -G -W`, an empty password leaves the key unencrypted.
func MarshalSecretKey(sec minisign.PrivateKey, password string) ([]byte, error) {
	if password == "" {
		text, err := sec.MarshalText()
		if err != nil {
			return nil, fmt.Errorf("encoding secret key: %w", err)
		}
		// The library's comment line says "encrypted" even here.
		key := text
		if comment, rest, ok := bytes.Cut(text, []byte("\n")); ok && bytes.HasPrefix(comment, []byte("untrusted comment:")) {
			key = rest
		}
		return []byte("untrusted comment: minisign unencrypted secret key " + KeyID(sec.ID()) + "\n" + string(bytes.TrimSpace(key)) + "\n"), nil
	}
	text, err := minisign.EncryptKey(password, sec)
	if err != nil {
		return nil, fmt.Errorf("encrypting secret key: %w", err)
	}
	return append(text, '\n'), nil
}

// SecretKeyEncrypted reports whether a secret key file needs a password.
func SecretKeyEncrypted(data []byte) bool { return minisign.IsEncrypted(bytes.TrimSpace(data)) }

// ParseSecretKey reads a minisign secret key file, decrypting it with
// password when it is encrypted.
func ParseSecretKey(data []byte, password string) (minisign.PrivateKey, error) {
	data = bytes.TrimSpace(data)
	if minisign.IsEncrypted(data) {
		sec, err := minisign.DecryptKey(password, data)
		if err != nil {
			return sec, fmt.Errorf("decrypting secret key (wrong password?): %w", err)
		}
		return sec, nil
	}
	var sec minisign.PrivateKey
	if err := sec.UnmarshalText(data); err != nil {
		return sec, fmt.Errorf("%w: secret key: %v", ErrMalformed, err)
	}
	return sec, nil
}
