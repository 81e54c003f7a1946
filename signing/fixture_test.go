package signing

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The fixtures under testdata/ were made with vigil-sign (release1/2 sign
// the bundle, root signs the keyring); the secret keys there are test-only.

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fixtureTrust(t testing.TB, name string) Trust {
	t.Helper()
	tr, err := ParseTrust(bytes.NewReader(readFixture(t, name)))
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestFixtures(t *testing.T) {
	trust, roots := fixtureTrust(t, "trust.json"), fixtureTrust(t, "roots.json")
	kr, err := ParseKeyring(bytes.NewReader(readFixture(t, "keyring.json")))
	if err != nil {
		t.Fatal(err)
	}
	fromKeyring, err := VerifyKeyring(kr, roots, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		trust   Trust
		mutate  func(string) string
		wantErr error
	}{
		{name: "trust file", trust: trust},
		{name: "keyring", trust: fromKeyring},
		{name: "roots are not release keys", trust: roots, wantErr: ErrThreshold},
		{name: "version edited in the file", trust: trust, mutate: func(s string) string { return strings.Replace(s, `"1.2.0"`, `"1.2.1"`, 1) }, wantErr: ErrBadSignature},
		{name: "unknown field", trust: trust, mutate: func(s string) string { return strings.Replace(s, `"plugin"`, `"extra":1,"plugin"`, 1) }, wantErr: ErrMalformed},
		{name: "bad sha256", trust: trust, mutate: func(s string) string { return strings.Replace(s, `"sha256":"6c`, `"sha256":"XX`, 1) }, wantErr: ErrMalformed},
		{name: "signatures stripped", trust: trust, mutate: func(s string) string {
			i := strings.Index(s, `"signatures"`)
			return s[:i] + `"signatures":[]}`
		}, wantErr: ErrNoSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := string(readFixture(t, "bundle/manifest.json"))
			if tt.mutate != nil {
				text = tt.mutate(text)
			}
			s, err := ParseManifest(strings.NewReader(text))
			if err == nil {
				_, err = Verify(s, bytes.NewReader(readFixture(t, "bundle/binary")), tt.trust,
					Expect{Plugin: "procmon", OS: "linux", Arch: "amd64", Running: "1.0.0", Now: now})
			}
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// FuzzParseManifest: no input panics, a parsed manifest round-trips through
// Marshal, and the only body the fixture keys accept is the signed one.
func FuzzParseManifest(f *testing.F) {
	seed := readFixture(f, "bundle/manifest.json")
	f.Add(seed)
	f.Add([]byte(`{"manifest":{},"signatures":[]}`))
	f.Add([]byte(`{"manifest":{"plugin":"procmon","version":"1.2.0-rc.1+build","os":"linux","arch":"arm64","length":1,"sha256":"` + strings.Repeat("0", 64) + `","expires":"2030-01-01T00:00:00+02:00","min_host_version":"0.0.0","rollback":true},"signatures":[{"key_id":"0000000000000000","signature":""}]}`))
	f.Add([]byte(`{"manifest":null}`))
	signedManifest, err := ParseManifest(bytes.NewReader(seed))
	if err != nil {
		f.Fatal(err)
	}
	signedBody, _ := signedManifest.Manifest.Body()
	trust := fixtureTrust(f, "trust.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseManifest(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("parse error not ErrMalformed: %v", err)
			}
			return
		}
		out, err := s.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseManifest(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("re-parsing own output: %v\n%s", err, out)
		}
		b1, _ := s.Manifest.Body()
		b2, _ := again.Manifest.Body()
		if !bytes.Equal(b1, b2) {
			t.Fatalf("body changed on round trip:\n%s\n%s", b1, b2)
		}
		if _, err := VerifyManifest(s, trust, Expect{Now: now}); err == nil && !bytes.Equal(b1, signedBody) {
			t.Fatalf("accepted a body nobody signed:\n%s", b1)
		}
	})
}

// FuzzParseKeyring: no input panics, and only the root-signed body verifies.
func FuzzParseKeyring(f *testing.F) {
	seed := readFixture(f, "keyring.json")
	f.Add(seed)
	f.Add([]byte(`{"keyring":{"serial":1,"expires":"2030-01-01T00:00:00Z","threshold":1,"keys":["x"]},"signatures":null}`))
	signedKR, err := ParseKeyring(bytes.NewReader(seed))
	if err != nil {
		f.Fatal(err)
	}
	signedBody, _ := signedKR.Keyring.Body()
	roots := fixtureTrust(f, "roots.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseKeyring(bytes.NewReader(data))
		if err != nil {
			return
		}
		body, _ := s.Keyring.Body()
		if _, err := VerifyKeyring(s, roots, now, 0); err == nil && !bytes.Equal(body, signedBody) {
			t.Fatalf("accepted a keyring nobody signed:\n%s", body)
		}
	})
}

// FuzzSignature: arbitrary signature text in a manifest never panics and
// never counts unless it is one of the two real signatures.
func FuzzSignature(f *testing.F) {
	s, err := ParseManifest(bytes.NewReader(readFixture(f, "bundle/manifest.json")))
	if err != nil {
		f.Fatal(err)
	}
	for _, sig := range s.Signatures {
		f.Add(sig.KeyID, sig.Signature)
	}
	f.Add("0000000000000000", "untrusted comment: x\nRUQ=\ntrusted comment: y\nAAAA")
	trust := fixtureTrust(f, "trust.json")
	real := map[string]bool{}
	for _, sig := range s.Signatures {
		real[sig.Signature] = true
	}
	f.Fuzz(func(t *testing.T, keyID, sig string) {
		m := s
		m.Signatures = []Signature{s.Signatures[0], {KeyID: keyID, Signature: sig}}
		_, err := VerifyManifest(m, trust, Expect{Now: now})
		if err == nil && !real[sig] && sig != s.Signatures[1].Signature {
			// A different text can still carry the same signature bytes
			// (comments are free-form); it must then be by the second key.
			if keyID != s.Signatures[1].KeyID {
				t.Fatalf("forged signature counted: %q by %s", sig, keyID)
			}
		}
	})
}

// FuzzParseTrust: no input panics; a parsed trust file has a sane threshold.
func FuzzParseTrust(f *testing.F) {
	f.Add(readFixture(f, "trust.json"))
	f.Add(readFixture(f, "roots.json"))
	f.Add([]byte(`{"threshold":-1,"keys":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, err := ParseTrust(bytes.NewReader(data))
		if err != nil {
			return
		}
		if tr.Threshold < 1 || tr.Threshold > len(tr.keys) {
			t.Fatalf("threshold %d of %d keys accepted", tr.Threshold, len(tr.keys))
		}
	})
}
