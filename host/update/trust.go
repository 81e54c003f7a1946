package update

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vigil-hids/vigil/signing"
)

// Trust is what a host believes about release signatures: either pinned
// release keys (a trust file), or pinned root keys and a root-signed
// keyring that lists the current release keys.
type Trust struct {
	// Keys are pinned release keys with their threshold.
	Keys *signing.Trust
	// Roots and Keyring: the release keys are those of the keyring, which
	// a threshold of Roots must have signed.
	Roots   *signing.Trust
	Keyring *signing.SignedKeyring
}

// Release returns the release keys to verify a manifest with: the pinned
// ones, or the keyring's after checking it against the roots, its expiry at
// now and minSerial (the highest keyring serial accepted before).
func (t Trust) Release(now time.Time, minSerial uint64) (signing.Trust, error) {
	switch {
	case t.Keys != nil:
		return *t.Keys, nil
	case t.Roots != nil && t.Keyring != nil:
		return signing.VerifyKeyring(*t.Keyring, *t.Roots, now, minSerial)
	}
	return signing.Trust{}, errors.New("update: no trusted keys (set update.trust_file, or update.roots_file and update.keyring_file)")
}

// KeyringSerial is the serial of the keyring in use, 0 without one.
func (t Trust) KeyringSerial() uint64 {
	if t.Keyring == nil {
		return 0
	}
	return t.Keyring.Keyring.Serial
}

// LoadTrust reads a trust file, or a roots file and a keyring file (the
// update section's files).
func LoadTrust(trustFile, rootsFile, keyringFile string) (Trust, error) {
	if trustFile != "" {
		t, err := readTrust(trustFile)
		if err != nil {
			return Trust{}, fmt.Errorf("update.trust_file: %w", err)
		}
		return Trust{Keys: &t}, nil
	}
	roots, err := readTrust(rootsFile)
	if err != nil {
		return Trust{}, fmt.Errorf("update.roots_file: %w", err)
	}
	f, err := os.Open(keyringFile)
	if err != nil {
		return Trust{}, fmt.Errorf("update.keyring_file: %w", err)
	}
	defer f.Close()
	kr, err := signing.ParseKeyring(f)
	if err != nil {
		return Trust{}, fmt.Errorf("update.keyring_file %s: %w", keyringFile, err)
	}
	return Trust{Roots: &roots, Keyring: &kr}, nil
}

func readTrust(path string) (signing.Trust, error) {
	f, err := os.Open(path)
	if err != nil {
		return signing.Trust{}, err
	}
	defer f.Close()
	t, err := signing.ParseTrust(f)
	if err != nil {
		return signing.Trust{}, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}
