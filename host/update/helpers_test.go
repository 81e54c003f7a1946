package update

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"aead.dev/minisign"

	"github.com/vigil-hids/vigil/signing"
)

var testNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type testKey struct {
	pub minisign.PublicKey
	sec minisign.PrivateKey
}

func newTestKey(t testing.TB) testKey {
	t.Helper()
	pub, sec, err := signing.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{pub, sec}
}

func testTrust(t testing.TB, k int, keys ...testKey) Trust {
	t.Helper()
	pubs := make([]minisign.PublicKey, len(keys))
	for i, x := range keys {
		pubs[i] = x.pub
	}
	tr, err := signing.NewTrust(k, pubs...)
	if err != nil {
		t.Fatal(err)
	}
	return Trust{Keys: &tr}
}

func manifestFor(plugin, version string, body []byte) signing.Manifest {
	sum := sha256.Sum256(body)
	return signing.Manifest{
		Plugin: plugin, Version: version, OS: "linux", Arch: "amd64",
		Length: int64(len(body)), SHA256: hex.EncodeToString(sum[:]),
		Expires: testNow.Add(24 * time.Hour), MinHostVersion: "1.0.0",
	}
}

func signManifest(t testing.TB, m signing.Manifest, keys ...testKey) []byte {
	t.Helper()
	s := signing.SignedManifest{Manifest: m}
	for _, k := range keys {
		if err := s.Sign(k.sec); err != nil {
			t.Fatal(err)
		}
	}
	b, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func expectFor(plugin string) signing.Expect {
	return signing.Expect{Plugin: plugin, OS: "linux", Arch: "amd64", Running: "1.0.0", HostVersion: "1.2.0", Now: testNow}
}
