package signing

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/coreos/go-semver/semver"
)

// Expect says what the verifying host runs and wants; empty fields are not
// checked (a CLI may verify a bundle without a running version).
type Expect struct {
	Plugin string
	OS     string
	Arch   string
	// Running is the plugin version running now; a lower manifest version
	// is refused unless the manifest carries a signed rollback.
	Running string
	// HostVersion is the running host's version, checked against the
	// manifest's min_host_version.
	HostVersion string
	// MinKeyringSerial is the highest keyring serial accepted before;
	// VerifyWithKeyring refuses a lower one.
	MinKeyringSerial uint64
	// Now decides expiry; it is the caller's injected clock.
	Now time.Time
}

// errNoClock guards against a forgotten clock: a zero time would make
// every expiry lie in the future.
var errNoClock = errors.New("signing: verification needs the current time (Expect.Now is zero)")

// Verified is what a successful verification established.
type Verified struct {
	Manifest Manifest
	Signers  int
}

// VerifyManifest checks signatures against trust, then expiry, plugin,
// platform and version against want. The binary is checked separately by
// VerifyBinary, so a host can refuse before downloading anything.
func VerifyManifest(s SignedManifest, trust Trust, want Expect) (Verified, error) {
	m := s.Manifest
	release := m.Plugin + " " + m.Version
	if want.Now.IsZero() {
		return Verified{}, errNoClock
	}
	if err := m.Validate(); err != nil {
		return Verified{}, fmt.Errorf("release %s: %w: %w", release, ErrMalformed, err)
	}
	body, err := m.Body()
	if err != nil {
		return Verified{}, err
	}
	n, err := countSigners(body, s.Signatures, trust)
	if err != nil {
		return Verified{}, fmt.Errorf("release %s refused: %w", release, err)
	}
	if !want.Now.Before(m.Expires) {
		return Verified{}, fmt.Errorf("release %s refused: %w: expired %s, now %s", release, ErrExpired,
			m.Expires.UTC().Format(time.RFC3339), want.Now.UTC().Format(time.RFC3339))
	}
	if want.Plugin != "" && want.Plugin != m.Plugin {
		return Verified{}, fmt.Errorf("release %s refused: %w: want plugin %q", release, ErrWrongPlugin, want.Plugin)
	}
	if (want.OS != "" && want.OS != m.OS) || (want.Arch != "" && want.Arch != m.Arch) {
		return Verified{}, fmt.Errorf("release %s refused: %w: built for %s/%s, this host is %s/%s",
			release, ErrWrongPlatform, m.OS, m.Arch, want.OS, want.Arch)
	}
	if want.Running != "" {
		running, err := semver.NewVersion(want.Running)
		if err != nil {
			return Verified{}, fmt.Errorf("running version %q is not semver: %w", want.Running, err)
		}
		if semver.New(m.Version).LessThan(*running) && !m.Rollback {
			return Verified{}, fmt.Errorf("release %s refused: %w: running %s", release, ErrDowngrade, want.Running)
		}
	}
	if want.HostVersion != "" {
		host, err := semver.NewVersion(want.HostVersion)
		if err != nil {
			return Verified{}, fmt.Errorf("host version %q is not semver: %w", want.HostVersion, err)
		}
		if host.LessThan(*semver.New(m.MinHostVersion)) {
			return Verified{}, fmt.Errorf("release %s refused: %w: needs host %s, running %s",
				release, ErrHostTooOld, m.MinHostVersion, want.HostVersion)
		}
	}
	return Verified{Manifest: m, Signers: n}, nil
}

// VerifyBinary reads at most m.Length+1 bytes from r and checks length and
// sha256 against the manifest. It never reads past the signed length plus
// one byte, so an endless stream from a mirror is cut off.
func VerifyBinary(m Manifest, r io.Reader) error {
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(r, m.Length+1))
	if err != nil {
		return fmt.Errorf("reading binary of %s %s: %w", m.Plugin, m.Version, err)
	}
	if n != m.Length {
		what := "truncated"
		if n > m.Length {
			what = "longer than signed"
		}
		return fmt.Errorf("binary of %s %s refused: %w: %s, signed length %d", m.Plugin, m.Version, ErrLengthMismatch, what, m.Length)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != m.SHA256 {
		return fmt.Errorf("binary of %s %s refused: %w: got %s, signed %s", m.Plugin, m.Version, ErrHashMismatch, got, m.SHA256)
	}
	return nil
}

// Verify checks a manifest and then its binary.
func Verify(s SignedManifest, binary io.Reader, trust Trust, want Expect) (Verified, error) {
	v, err := VerifyManifest(s, trust, want)
	if err != nil {
		return Verified{}, err
	}
	if err := VerifyBinary(v.Manifest, binary); err != nil {
		return Verified{}, err
	}
	return v, nil
}
