package artifacts

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func put(t *testing.T, s *Store, b []byte, age time.Duration) string {
	t.Helper()
	sum := sha256.Sum256(b)
	sha := hex.EncodeToString(sum[:])
	if _, err := s.Put(bytes.NewReader(b), sha, int64(len(b))); err != nil {
		t.Fatal(err)
	}
	then := time.Now().Add(-age)
	if err := os.Chtimes(s.Path(sha), then, then); err != nil {
		t.Fatal(err)
	}
	return sha
}

func TestCollectKeepsNamedYoungAndUploads(t *testing.T) {
	s, err := Open(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	named := put(t, s, []byte("named"), 10*time.Hour)
	old := put(t, s, []byte("old orphan"), 2*time.Hour)
	young := put(t, s, []byte("young orphan"), 0)
	upload := filepath.Join(s.Dir(), "tmp", "upload-in-progress")
	if err := os.WriteFile(upload, []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(s.Dir(), "sha256", "README")
	if err := os.WriteFile(stray, []byte("not an artifact"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, o := range []GCOptions{{}, {Named: func(string) bool { return false }, Grace: time.Second}} {
		if _, err := s.Collect(o); err == nil {
			t.Fatalf("%+v accepted", o)
		}
	}
	rep, err := s.Collect(GCOptions{Named: func(sha string) bool { return sha == named }})
	if err != nil || len(rep.Removed) != 1 || rep.Removed[0].SHA256 != old || len(rep.Young) != 1 || rep.Young[0].SHA256 != young ||
		rep.Named != 1 || rep.BytesFreed != int64(len("old orphan")) || rep.Grace != "1h0m0s" {
		t.Fatalf("collect: %+v %v", rep, err)
	}
	for p, want := range map[string]bool{s.Path(named): true, s.Path(young): true, s.Path(old): false, upload: true, stray: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Fatalf("%s: exists=%v, want %v", p, err == nil, want)
		}
	}
}

func TestDigests(t *testing.T) {
	sha := strings.Repeat("ab", 32)
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"json field", `{"sha256":"` + sha + `"}`, []string{sha}},
		{"upper case", strings.ToUpper(sha), []string{sha}},
		{"65 digits are no sha256", sha + "0", nil},
		{"63 digits", sha[:63], nil},
		{"two", sha + " " + sha, []string{sha, sha}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Digests([]byte(tt.in)); strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func FuzzDigests(f *testing.F) {
	f.Add([]byte(`{"manifest":{"sha256":"` + strings.Repeat("0f", 32) + `"}}`))
	f.Add([]byte(strings.Repeat("a", 200)))
	f.Fuzz(func(t *testing.T, b []byte) {
		low := strings.ToLower(string(b))
		for _, d := range Digests(b) {
			if !ValidDigest(d) || !strings.Contains(low, d) {
				t.Fatalf("%q is not a sha256 of the input", d)
			}
		}
	})
}

// TestCollectKeepsAnArtifactAnUploadReuses: a publish that reuses an
// unnamed stored artifact renews it, then reads the whole upload before its
// manifest is written. However long that upload takes (here, as Collect's
// clock sees it, three hours with a grace of one), a Collect meanwhile must
// not remove the file the manifest is about to name.
func TestCollectKeepsAnArtifactAnUploadReuses(t *testing.T) {
	s, err := Open(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	bin := []byte("a binary published, removed, and published again")
	sha := put(t, s, bin, 3*time.Hour)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := s.Put(pr, sha, int64(len(bin)))
		done <- err
	}()
	// Once Put has read the first half, it has found and renewed the file.
	if _, err := pw.Write(bin[:10]); err != nil {
		t.Fatal(err)
	}
	none := func(string) bool { return false }
	rep, err := s.Collect(GCOptions{Named: none, Grace: time.Hour, Now: time.Now().Add(3 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pw.Write(bin[10:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatalf("Put: %v", err)
	}
	if _, err := s.Stat(sha); err != nil {
		t.Fatalf("Put succeeded, but its artifact is gone (a Collect during the upload removed it, report %+v): %v", rep, err)
	}
	if len(rep.Removed) != 0 || len(rep.Young) != 1 || rep.Young[0].SHA256 != sha {
		t.Fatalf("collect during the upload: %+v", rep)
	}
	// The grace period counts from the end of the upload: a Collect just
	// after it, before the manifest is written, keeps the file too.
	if rep, err := s.Collect(GCOptions{Named: none, Grace: time.Minute}); err != nil || len(rep.Removed) != 0 {
		t.Fatalf("collect after the upload: %+v %v", rep, err)
	}
}
