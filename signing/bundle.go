package signing

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"aead.dev/minisign"

	"github.com/vigil-hids/vigil/internal/atomicfile"
)

// A bundle is a directory:
//
//	binary                   the release executable
//	manifest.json            SignedManifest
//	binary.<KEYID>.minisig   per key, a minisign signature of binary itself
//
// The .minisig files let the stock `minisign -V` (and minio/selfupdate's
// minisign verifier) check the binary directly; Vigil's own verification
// uses manifest.json.
const (
	BundleBinary   = "binary"
	BundleManifest = "manifest.json"
)

// BinarySignaturePath is where a bundle keeps keyID's signature of its binary.
func BinarySignaturePath(dir, keyID string) string {
	return filepath.Join(dir, BundleBinary+"."+keyID+".minisig")
}

// CreateBundle copies binaryPath into a new bundle directory dir and
// writes an unsigned manifest from m with length and sha256 filled in.
func CreateBundle(dir, binaryPath string, m Manifest) (SignedManifest, error) {
	src, err := os.Open(binaryPath)
	if err != nil {
		return SignedManifest{}, fmt.Errorf("opening binary: %w", err)
	}
	defer src.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return SignedManifest{}, fmt.Errorf("creating bundle: %w", err)
	}
	dst, err := os.OpenFile(filepath.Join(dir, BundleBinary), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return SignedManifest{}, fmt.Errorf("creating bundle binary: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(dst, h), src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return SignedManifest{}, fmt.Errorf("copying binary: %w", err)
	}
	m.Length, m.SHA256 = n, hex.EncodeToString(h.Sum(nil))
	if err := m.Validate(); err != nil {
		return SignedManifest{}, err
	}
	s := SignedManifest{Manifest: m, Signatures: []Signature{}}
	return s, WriteManifest(dir, s)
}

// ReadBundleManifest reads dir/manifest.json.
func ReadBundleManifest(dir string) (SignedManifest, error) {
	f, err := os.Open(filepath.Join(dir, BundleManifest))
	if err != nil {
		return SignedManifest{}, fmt.Errorf("opening manifest: %w", err)
	}
	defer f.Close()
	return ParseManifest(f)
}

// WriteManifest replaces dir/manifest.json atomically.
func WriteManifest(dir string, s SignedManifest) error {
	b, err := s.Marshal()
	if err != nil {
		return err
	}
	path := filepath.Join(dir, BundleManifest)
	if err := atomicfile.Write(path, b, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// SignBundle adds sec's signature to the bundle's manifest (keeping those
// of other keys) and writes sec's minisign signature of the binary. The
// binary must still match the manifest.
func SignBundle(dir string, sec minisign.PrivateKey) (SignedManifest, error) {
	s, err := ReadBundleManifest(dir)
	if err != nil {
		return s, err
	}
	f, err := os.Open(filepath.Join(dir, BundleBinary))
	if err != nil {
		return s, fmt.Errorf("opening bundle binary: %w", err)
	}
	defer f.Close()
	if err := VerifyBinary(s.Manifest, f); err != nil {
		return s, fmt.Errorf("refusing to sign: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return s, fmt.Errorf("rewinding bundle binary: %w", err)
	}
	r := minisign.NewReader(f)
	if _, err := io.Copy(io.Discard, r); err != nil {
		return s, fmt.Errorf("hashing bundle binary: %w", err)
	}
	binSig := r.SignWithComments(sec, s.Manifest.trustedComment(), "signature from vigil-sign secret key "+KeyID(sec.ID()))
	if err := s.Sign(sec); err != nil {
		return s, err
	}
	sigPath := BinarySignaturePath(dir, KeyID(sec.ID()))
	if err := atomicfile.Write(sigPath, append(binSig, '\n'), 0o644); err != nil {
		return s, fmt.Errorf("writing %s: %w", sigPath, err)
	}
	return s, WriteManifest(dir, s)
}

// VerifyBundle verifies dir's manifest and binary against trust.
func VerifyBundle(dir string, trust Trust, want Expect) (Verified, error) {
	s, err := ReadBundleManifest(dir)
	if err != nil {
		return Verified{}, err
	}
	f, err := os.Open(filepath.Join(dir, BundleBinary))
	if err != nil {
		return Verified{}, fmt.Errorf("opening bundle binary: %w", err)
	}
	defer f.Close()
	return Verify(s, f, trust, want)
}
