package signing

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"
)

var now = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type key struct {
	pub minisign.PublicKey
	sec minisign.PrivateKey
}

func newKey(t testing.TB) key {
	t.Helper()
	pub, sec, err := GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return key{pub, sec}
}

func trustOf(t testing.TB, k int, keys ...key) Trust {
	t.Helper()
	pubs := make([]minisign.PublicKey, len(keys))
	for i, x := range keys {
		pubs[i] = x.pub
	}
	tr, err := NewTrust(k, pubs...)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func release(bin []byte) Manifest {
	sum := sha256.Sum256(bin)
	return Manifest{
		Plugin: "procmon", Version: "1.2.0", OS: "linux", Arch: "amd64",
		Length: int64(len(bin)), SHA256: hex.EncodeToString(sum[:]),
		Expires: now.Add(24 * time.Hour), MinHostVersion: "1.0.0",
	}
}

func signed(t testing.TB, m Manifest, keys ...key) SignedManifest {
	t.Helper()
	s := SignedManifest{Manifest: m}
	for _, k := range keys {
		if err := s.Sign(k.sec); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func TestVerifyRefusals(t *testing.T) {
	a, b, c, stranger := newKey(t), newKey(t), newKey(t), newKey(t)
	bin := []byte("#!/bin/true\nplugin binary")
	want := Expect{Plugin: "procmon", OS: "linux", Arch: "amd64", Running: "1.1.0", HostVersion: "1.0.0", Now: now}
	trust2 := trustOf(t, 2, a, b, c)

	tests := []struct {
		name    string
		sm      func() SignedManifest
		binary  []byte
		want    func(Expect) Expect
		wantErr error
	}{
		{name: "two distinct keys", sm: func() SignedManifest { return signed(t, release(bin), a, b) }},
		{name: "no signature", sm: func() SignedManifest { return signed(t, release(bin)) }, wantErr: ErrNoSignature},
		{name: "one key short of threshold", sm: func() SignedManifest { return signed(t, release(bin), a) }, wantErr: ErrThreshold},
		{name: "same key counted twice", sm: func() SignedManifest {
			s := signed(t, release(bin), a)
			s.Signatures = append(s.Signatures, s.Signatures[0])
			return s
		}, wantErr: ErrThreshold},
		{name: "unknown key", sm: func() SignedManifest { return signed(t, release(bin), a, stranger) }, wantErr: ErrThreshold},
		{name: "tampered field after signing", sm: func() SignedManifest {
			s := signed(t, release(bin), a, b)
			s.Manifest.Version = "9.0.0"
			return s
		}, wantErr: ErrBadSignature},
		{name: "signature entry names another key", sm: func() SignedManifest {
			s := signed(t, release(bin), a, b)
			s.Signatures[0].KeyID = KeyID(c.pub.ID())
			return s
		}, wantErr: ErrBadSignature},
		{name: "garbage signature", sm: func() SignedManifest {
			s := signed(t, release(bin), a, b)
			s.Signatures[1].Signature = "not a minisign signature"
			return s
		}, wantErr: ErrBadSignature},
		{name: "tampered binary", sm: func() SignedManifest { return signed(t, release(bin), a, b) },
			binary: append([]byte("X"), bin[1:]...), wantErr: ErrHashMismatch},
		{name: "truncated binary", sm: func() SignedManifest { return signed(t, release(bin), a, b) },
			binary: bin[:len(bin)-1], wantErr: ErrLengthMismatch},
		{name: "oversized binary", sm: func() SignedManifest { return signed(t, release(bin), a, b) },
			binary: append(append([]byte{}, bin...), 0), wantErr: ErrLengthMismatch},
		{name: "expired", sm: func() SignedManifest { return signed(t, release(bin), a, b) },
			want: func(e Expect) Expect { e.Now = now.Add(24 * time.Hour); return e }, wantErr: ErrExpired},
		{name: "another plugin", sm: func() SignedManifest { return signed(t, release(bin), a, b) },
			want: func(e Expect) Expect { e.Plugin = "netmon"; return e }, wantErr: ErrWrongPlugin},
		{name: "another arch", sm: func() SignedManifest { return signed(t, release(bin), a, b) },
			want: func(e Expect) Expect { e.Arch = "arm64"; return e }, wantErr: ErrWrongPlatform},
		{name: "another os", sm: func() SignedManifest { return signed(t, release(bin), a, b) },
			want: func(e Expect) Expect { e.OS = "darwin"; return e }, wantErr: ErrWrongPlatform},
		{name: "downgrade", sm: func() SignedManifest { return signed(t, release(bin), a, b) },
			want: func(e Expect) Expect { e.Running = "1.3.0"; return e }, wantErr: ErrDowngrade},
		{name: "signed rollback allows downgrade", sm: func() SignedManifest {
			m := release(bin)
			m.Rollback = true
			return signed(t, m, a, b)
		}, want: func(e Expect) Expect { e.Running = "1.3.0"; return e }},
		{name: "rollback flag added after signing", sm: func() SignedManifest {
			s := signed(t, release(bin), a, b)
			s.Manifest.Rollback = true
			return s
		}, want: func(e Expect) Expect { e.Running = "1.3.0"; return e }, wantErr: ErrBadSignature},
		{name: "no clock", sm: func() SignedManifest { return signed(t, release(bin), a, b) },
			want: func(e Expect) Expect { e.Now = time.Time{}; return e }, wantErr: errNoClock},
		{name: "host too old", sm: func() SignedManifest { return signed(t, release(bin), a, b) },
			want: func(e Expect) Expect { e.HostVersion = "0.9.0"; return e }, wantErr: ErrHostTooOld},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := want
			if tt.want != nil {
				w = tt.want(w)
			}
			b := bin
			if tt.binary != nil {
				b = tt.binary
			}
			v, err := Verify(tt.sm(), bytes.NewReader(b), trust2, w)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Verify: got %v, want %v", err, tt.wantErr)
			}
			if err == nil && v.Signers != 2 {
				t.Fatalf("signers = %d, want 2", v.Signers)
			}
			if err != nil && !strings.Contains(err.Error(), "signing: ") {
				t.Fatalf("error %q does not name the package", err)
			}
		})
	}
}

func TestKeyring(t *testing.T) {
	root1, root2, rel1, rel2, rel3 := newKey(t), newKey(t), newKey(t), newKey(t), newKey(t)
	roots := trustOf(t, 2, root1, root2)
	bin := []byte("binary")
	kr := func(expires time.Time, signers ...key) SignedKeyring {
		s := SignedKeyring{Keyring: Keyring{Serial: 2, Expires: expires, Threshold: 1, Keys: []string{rel2.pub.String(), rel3.pub.String()}}}
		for _, k := range signers {
			if err := s.Sign(k.sec); err != nil {
				t.Fatal(err)
			}
		}
		return s
	}
	tests := []struct {
		name      string
		kr        SignedKeyring
		signer    key
		minSerial uint64
		wantErr   error
	}{
		{name: "rotated key accepted", kr: kr(now.Add(time.Hour), root1, root2), signer: rel2},
		{name: "retired key refused", kr: kr(now.Add(time.Hour), root1, root2), signer: rel1, wantErr: ErrThreshold},
		{name: "unsigned keyring", kr: kr(now.Add(time.Hour)), signer: rel2, wantErr: ErrKeyringUnsigned},
		{name: "one root short", kr: kr(now.Add(time.Hour), root1), signer: rel2, wantErr: ErrKeyringUnsigned},
		{name: "signed by a release key", kr: kr(now.Add(time.Hour), root1, rel2), signer: rel2, wantErr: ErrKeyringUnsigned},
		{name: "expired keyring", kr: kr(now, root1, root2), signer: rel2, wantErr: ErrKeyringExpired},
		{name: "same serial again", kr: kr(now.Add(time.Hour), root1, root2), signer: rel2, minSerial: 2},
		{name: "older serial", kr: kr(now.Add(time.Hour), root1, root2), signer: rel2, minSerial: 3, wantErr: ErrKeyringRollback},
		{name: "keys swapped after signing", kr: func() SignedKeyring {
			s := kr(now.Add(time.Hour), root1, root2)
			s.Keyring.Keys = []string{rel1.pub.String()}
			return s
		}(), signer: rel1, wantErr: ErrBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Through the file form, as a host would read it.
			b, err := tt.kr.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			parsed, err := ParseKeyring(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			_, err = VerifyWithKeyring(signed(t, release(bin), tt.signer), bytes.NewReader(bin), parsed, roots, Expect{Now: now, MinKeyringSerial: tt.minSerial})
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestTrustRefusals(t *testing.T) {
	a := newKey(t)
	tests := []struct {
		name string
		in   string
	}{
		{name: "threshold above keys", in: `{"threshold":2,"keys":["` + a.pub.String() + `","` + a.pub.String() + `"]}`},
		{name: "zero threshold", in: `{"threshold":0,"keys":["` + a.pub.String() + `"]}`},
		{name: "bad key", in: `{"threshold":1,"keys":["RWQnotakey"]}`},
		{name: "unknown field", in: `{"threshold":1,"keys":["` + a.pub.String() + `"],"extra":1}`},
		{name: "trailing data", in: `{"threshold":1,"keys":["` + a.pub.String() + `"]}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseTrust(strings.NewReader(tt.in)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
}

func TestSecretKeyPassword(t *testing.T) {
	k := newKey(t)
	enc, err := MarshalSecretKey(k.sec, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !SecretKeyEncrypted(enc) {
		t.Fatal("secret key written with a password is not encrypted")
	}
	if _, err := ParseSecretKey(enc, "wrong"); err == nil {
		t.Fatal("wrong password accepted")
	}
	got, err := ParseSecretKey(enc, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(k.sec) {
		t.Fatal("decrypted key differs")
	}
}

// TestStockMinisignVerifiesOurSignatures runs /usr/bin/minisign -V on the
// binary signature and the manifest body signature that vigil-sign made.
func TestStockMinisignVerifiesOurSignatures(t *testing.T) {
	if _, err := exec.LookPath("minisign"); err != nil {
		t.Fatalf("needs the minisign package (apt-get install minisign): %v", err)
	}
	dir := t.TempDir()
	k := newKey(t)
	pubPath := filepath.Join(dir, "key.pub")
	if err := os.WriteFile(pubPath, MarshalPublicKey(k.pub), 0o644); err != nil {
		t.Fatal(err)
	}
	binPath := filepath.Join(dir, "plugin")
	if err := os.WriteFile(binPath, bytes.Repeat([]byte("vigil"), 100000), 0o755); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "bundle")
	m := release(nil)
	if _, err := CreateBundle(bundle, binPath, m); err != nil {
		t.Fatal(err)
	}
	s, err := SignBundle(bundle, k.sec)
	if err != nil {
		t.Fatal(err)
	}
	// The binary itself.
	out, err := exec.Command("minisign", "-V", "-P", k.pub.String(), "-m", filepath.Join(bundle, BundleBinary),
		"-x", BinarySignaturePath(bundle, KeyID(k.pub.ID()))).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "vigil release procmon 1.2.0") {
		t.Fatalf("minisign -V on the binary: %v\n%s", err, out)
	}
	// The manifest body.
	body, _ := s.Manifest.Body()
	bodyPath, sigPath := filepath.Join(dir, "manifest.body"), filepath.Join(dir, "manifest.body.minisig")
	_ = os.WriteFile(bodyPath, body, 0o644)
	_ = os.WriteFile(sigPath, []byte(s.Signatures[0].Signature), 0o644)
	if out, err := exec.Command("minisign", "-V", "-p", pubPath, "-m", bodyPath, "-x", sigPath).CombinedOutput(); err != nil {
		t.Fatalf("minisign -V on the manifest body: %v\n%s", err, out)
	}
	// Our unencrypted secret key signs with the stock tool too.
	secPath := filepath.Join(dir, "key.key")
	secText, _ := MarshalSecretKey(k.sec, "")
	_ = os.WriteFile(secPath, secText, 0o600)
	if out, err := exec.Command("minisign", "-S", "-s", secPath, "-m", bodyPath, "-x", bodyPath+".stock").CombinedOutput(); err != nil {
		t.Fatalf("minisign -S with a vigil-sign key: %v\n%s", err, out)
	}
	stockSig, _ := os.ReadFile(bodyPath + ".stock")
	if _, err := countSigners(body, []Signature{{KeyID: KeyID(k.pub.ID()), Signature: string(stockSig)}}, trustOf(t, 1, k)); err != nil {
		t.Fatalf("minisign's signature with our key: %v", err)
	}
	// And it refuses a tampered body, so the check above means something.
	_ = os.WriteFile(bodyPath, append(body, ' '), 0o644)
	if out, err := exec.Command("minisign", "-V", "-p", pubPath, "-m", bodyPath, "-x", sigPath).CombinedOutput(); err == nil {
		t.Fatalf("minisign -V accepted a tampered body:\n%s", out)
	}
}

// TestStockMinisignKeysSignForUs makes a key and a signature with the stock
// tool (empty password, -W) and verifies them here.
func TestStockMinisignKeysSignForUs(t *testing.T) {
	if _, err := exec.LookPath("minisign"); err != nil {
		t.Fatalf("needs the minisign package (apt-get install minisign): %v", err)
	}
	dir := t.TempDir()
	pubPath, secPath := filepath.Join(dir, "k.pub"), filepath.Join(dir, "k.key")
	if out, err := exec.Command("minisign", "-G", "-W", "-p", pubPath, "-s", secPath).CombinedOutput(); err != nil {
		t.Fatalf("minisign -G: %v\n%s", err, out)
	}
	pubText, _ := os.ReadFile(pubPath)
	pub, err := ParsePublicKey(pubText)
	if err != nil {
		t.Fatal(err)
	}
	secText, _ := os.ReadFile(secPath)
	sec, err := ParseSecretKey(secText, "")
	if err != nil {
		t.Fatalf("reading minisign's secret key: %v", err)
	}
	bin := []byte("binary from the stock tool")
	m := release(bin)
	body, _ := m.Body()
	bodyPath := filepath.Join(dir, "body")
	_ = os.WriteFile(bodyPath, body, 0o644)
	if out, err := exec.Command("minisign", "-S", "-s", secPath, "-m", bodyPath, "-t", "stock").CombinedOutput(); err != nil {
		t.Fatalf("minisign -S: %v\n%s", err, out)
	}
	sig, _ := os.ReadFile(bodyPath + ".minisig")
	s := SignedManifest{Manifest: m, Signatures: []Signature{{KeyID: KeyID(pub.ID()), Signature: string(sig)}}}
	pubs, _ := NewTrust(1, pub)
	if _, err := Verify(s, bytes.NewReader(bin), pubs, Expect{Now: now}); err != nil {
		t.Fatalf("verifying minisign's signature: %v", err)
	}
	// The secret key minisign wrote signs for vigil-sign too.
	s2 := signed(t, m, key{pub, sec})
	if _, err := Verify(s2, bytes.NewReader(bin), pubs, Expect{Now: now}); err != nil {
		t.Fatalf("verifying with minisign's key: %v", err)
	}
}

func TestBundleSecondKeyAddsSignature(t *testing.T) {
	dir := t.TempDir()
	a, b := newKey(t), newKey(t)
	binPath := filepath.Join(dir, "plugin")
	_ = os.WriteFile(binPath, []byte("plugin"), 0o755)
	bundle := filepath.Join(dir, "bundle")
	if _, err := CreateBundle(bundle, binPath, release(nil)); err != nil {
		t.Fatal(err)
	}
	for _, k := range []key{a, b, a} { // re-signing by a replaces, never duplicates
		if _, err := SignBundle(bundle, k.sec); err != nil {
			t.Fatal(err)
		}
	}
	s, err := ReadBundleManifest(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Signatures) != 2 {
		t.Fatalf("signatures = %d, want 2", len(s.Signatures))
	}
	if _, err := VerifyBundle(bundle, trustOf(t, 2, a, b), Expect{Now: now}); err != nil {
		t.Fatal(err)
	}
}
