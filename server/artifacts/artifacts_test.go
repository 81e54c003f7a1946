package artifacts

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func open(t *testing.T, max int64) *Store {
	t.Helper()
	s, err := Open(Config{Dir: t.TempDir(), MaxBytes: max})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPutRefusesWhatTheManifestDoesNotDescribe(t *testing.T) {
	body := bytes.Repeat([]byte("vigil release\n"), 1000)
	sha := digest(body)
	tampered := bytes.Clone(body)
	tampered[100] ^= 1
	tests := []struct {
		name    string
		content []byte
		sha     string
		length  int64
		want    error
		msg     string
	}{
		{name: "tampered", content: tampered, sha: sha, length: int64(len(body)), want: ErrMismatch, msg: "got sha256:" + digest(tampered)},
		{name: "truncated", content: body[:10], sha: sha, length: int64(len(body)), want: ErrMismatch, msg: "truncated, got 10 bytes"},
		{name: "padded", content: append(bytes.Clone(body), 'x'), sha: sha, length: int64(len(body)), want: ErrMismatch, msg: "longer than the signed length"},
		{name: "over the cap", content: body, sha: sha, length: 1 << 30, want: ErrTooLarge, msg: "over the cap of 65536"},
		{name: "bad digest", content: body, sha: strings.ToUpper(sha), length: int64(len(body)), want: ErrInvalidDigest},
		{name: "zero length", content: nil, sha: sha, length: 0, want: ErrMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, 64<<10)
			_, err := s.Put(bytes.NewReader(tt.content), tt.sha, tt.length)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Put: %v, want %v containing %q", err, tt.want, tt.msg)
			}
			if list, _ := s.List(); len(list) != 0 {
				t.Fatalf("refused content was stored: %v", list)
			}
			if left, _ := os.ReadDir(s.tmpDir()); len(left) != 0 {
				t.Fatalf("temporary files left: %v", left)
			}
		})
	}
}

func TestPutStoresOnceAndServesRanges(t *testing.T) {
	s := open(t, 0)
	body := make([]byte, 300<<10)
	for i := range body {
		body[i] = byte(i * 7)
	}
	sha := digest(body)
	in, err := s.Put(bytes.NewReader(body), sha, int64(len(body)))
	if err != nil || !in.Created || in.Length != int64(len(body)) {
		t.Fatalf("Put: %+v %v", in, err)
	}
	// A second put of the same sha256 keeps the stored file; its body is
	// still checked, and a different length is refused.
	if in, err := s.Put(bytes.NewReader(body), sha, int64(len(body))); err != nil || in.Created {
		t.Fatalf("second Put: %+v %v", in, err)
	}
	tampered := bytes.Clone(body)
	tampered[0] ^= 1
	if _, err := s.Put(bytes.NewReader(tampered), sha, int64(len(body))); !errors.Is(err, ErrMismatch) {
		t.Fatalf("tampered upload of a stored artifact: %v", err)
	}
	if _, err := s.Put(iotestErrReader{}, sha, int64(len(body))); err == nil || !strings.Contains(err.Error(), "after 0 bytes: read") {
		t.Fatalf("failing reader: %v", err)
	}
	if _, err := s.Put(bytes.NewReader(body), sha, 5); !errors.Is(err, ErrMismatch) {
		t.Fatalf("same sha256, other length: %v", err)
	}
	if fi, err := os.Stat(s.Path(sha)); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("stored file: %v %v", fi, err)
	}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.Serve(w, r, strings.TrimPrefix(r.URL.Path, "/")); err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
		}
	}))
	defer srv.Close()
	get := func(rng string) (*http.Response, []byte) {
		req, _ := http.NewRequest("GET", srv.URL+"/"+sha, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	resp, b := get("")
	if resp.StatusCode != 200 || !bytes.Equal(b, body) || resp.Header.Get("ETag") != `"`+sha+`"` {
		t.Fatalf("full GET: %d, %d bytes, etag %q", resp.StatusCode, len(b), resp.Header.Get("ETag"))
	}
	resp, b = get("bytes=123456-")
	if resp.StatusCode != 206 || !bytes.Equal(b, body[123456:]) {
		t.Fatalf("resume: %d, %d bytes", resp.StatusCode, len(b))
	}
	resp, b = get("bytes=10-19")
	if resp.StatusCode != 206 || !bytes.Equal(b, body[10:20]) || resp.Header.Get("Content-Range") != "bytes 10-19/307200" {
		t.Fatalf("range: %d %q %q", resp.StatusCode, b, resp.Header.Get("Content-Range"))
	}
	req, _ := http.NewRequest("HEAD", srv.URL+"/"+sha, nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 || resp.ContentLength != int64(len(body)) {
		t.Fatalf("HEAD: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	req, _ = http.NewRequest("GET", srv.URL+"/"+sha, nil)
	req.Header.Set("If-None-Match", `"`+sha+`"`)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	resp, _ = get("bytes=999999999-")
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("range past the end: %d", resp.StatusCode)
	}
	other := digest([]byte("x"))
	if err := s.Serve(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil), other); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing artifact: %v", err)
	}
}

func TestOpenRemovesInterruptedUploads(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(s.tmpDir(), "abc.123")
	if err := os.WriteFile(stale, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("leftover upload still there: %v", err)
	}
	if _, err := Open(Config{}); err == nil || !strings.Contains(err.Error(), "artifact-dir is required") {
		t.Fatalf("empty config: %v", err)
	}
}

// iotestErrReader fails every read.
type iotestErrReader struct{}

func (iotestErrReader) Read([]byte) (int, error) { return 0, errors.New("read") }
