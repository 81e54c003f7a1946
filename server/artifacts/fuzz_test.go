package artifacts

import (
	"bytes"
	"os"
	"testing"
)

// FuzzPut uploads content under the digest and length of claimed: the
// store must keep it exactly when the two are the same bytes, and keep
// nothing otherwise.
func FuzzPut(f *testing.F) {
	f.Add([]byte("binary"), []byte("binary"))
	f.Add([]byte("binary"), []byte("binarY"))
	f.Add([]byte("bin"), []byte("binary"))
	f.Add([]byte("binary!"), []byte("binary"))
	f.Add([]byte{}, []byte{})
	s, err := Open(Config{Dir: f.TempDir(), MaxBytes: 1 << 16})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, content, claimed []byte) {
		sha := digest(claimed)
		_ = os.Remove(s.Path(sha))
		_, err := s.Put(bytes.NewReader(content), sha, int64(len(claimed)))
		stored, rerr := os.ReadFile(s.Path(sha))
		ok := bytes.Equal(content, claimed) && len(claimed) > 0 && len(claimed) <= 1<<16
		switch {
		case ok && (err != nil || rerr != nil || !bytes.Equal(stored, claimed)):
			t.Fatalf("matching upload not stored: %v %v", err, rerr)
		case !ok && (err == nil || rerr == nil):
			t.Fatalf("mismatching upload accepted: %v, stored %v", err, rerr == nil)
		}
		if left, _ := os.ReadDir(s.tmpDir()); len(left) != 0 {
			t.Fatalf("temporary files left: %d", len(left))
		}
	})
}
