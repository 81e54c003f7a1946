package signing

import (
	"bytes"
	"fmt"
	"testing"
)

// BenchmarkVerifyBinary verifies manifest and binary; sha256 over the
// binary dominates. Issue 5's target: a 20 MB release in ≤ 100 ms.
func BenchmarkVerifyBinary(b *testing.B) {
	a, c := newKey(b), newKey(b)
	for _, mb := range []int{20, 50} {
		b.Run(fmt.Sprintf("%dMB", mb), func(b *testing.B) {
			bin := bytes.Repeat([]byte{0x90}, mb<<20)
			s := signed(b, release(bin), a, c)
			trust := trustOf(b, 2, a, c)
			b.SetBytes(int64(len(bin)))
			b.ResetTimer()
			for b.Loop() {
				if _, err := Verify(s, bytes.NewReader(bin), trust, Expect{Now: now}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerifyManifest3Sigs verifies a manifest with three signatures
// against a 3-of-3 trust file (no binary).
func BenchmarkVerifyManifest3Sigs(b *testing.B) {
	k1, k2, k3 := newKey(b), newKey(b), newKey(b)
	s := signed(b, release([]byte("x")), k1, k2, k3)
	trust := trustOf(b, 3, k1, k2, k3)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := VerifyManifest(s, trust, Expect{Now: now}); err != nil {
			b.Fatal(err)
		}
	}
}
