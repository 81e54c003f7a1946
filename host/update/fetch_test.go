package update

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/signing"
)

// artifactServer serves body at /v1/artifacts/{sha} with ranges, the way
// vigil-server does; handler, if set, replaces it.
func artifactServer(t *testing.T, body []byte, sha string) *httptest.Server {
	return newArtifactServerSrv(t, body, sha)
}

func newArtifactServer(t testing.TB, body []byte, sha string) string {
	return newArtifactServerSrv(t, body, sha).URL
}

func newArtifactServerSrv(t testing.TB, body []byte, sha string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/artifacts/"+sha {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func fastSource(url string) Source {
	return Source{BaseURL: url, RequestTimeout: 5 * time.Second, StallTimeout: 300 * time.Millisecond, Attempts: 3, RetryDelay: 10 * time.Millisecond}
}

func TestFetchVerifiesAndDownloads(t *testing.T) {
	k1, k2 := newTestKey(t), newTestKey(t)
	body := make([]byte, 1<<20)
	rand.Read(body)
	m := manifestFor("procmon", "1.1.0", body)
	srv := artifactServer(t, body, m.SHA256)
	dir := t.TempDir()
	path, v, err := Fetch(context.Background(), Request{
		Manifest: signManifest(t, m, k1, k2), Trust: testTrust(t, 2, k1, k2),
		Expect: expectFor("procmon"), Source: fastSource(srv.URL), Dir: dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	if v.Signers != 2 || v.Manifest.Version != "1.1.0" {
		t.Errorf("verified %+v", v)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("downloaded file differs (err %v)", err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o755 {
		t.Errorf("mode %v, want 0755", st.Mode())
	}
}

// TestFetchResumesAfterCut: the first response is cut halfway; the next
// request asks for the rest with a Range header and the file is complete.
func TestFetchResumesAfterCut(t *testing.T) {
	k := newTestKey(t)
	body := make([]byte, 256<<10)
	rand.Read(body)
	m := manifestFor("procmon", "1.1.0", body)
	var calls atomic.Int32
	var ranges []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ranges = append(ranges, r.Header.Get("Range"))
		if calls.Add(1) == 1 {
			w.Header().Set("Content-Length", "262144")
			w.WriteHeader(http.StatusOK)
			w.Write(body[:100000])
			panic(http.ErrAbortHandler) // cut the connection
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	}))
	defer srv.Close()
	path, _, err := Fetch(context.Background(), Request{
		Manifest: signManifest(t, m, k), Trust: testTrust(t, 1, k),
		Expect: expectFor("procmon"), Source: fastSource(srv.URL), Dir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if !bytes.Equal(got, body) {
		t.Fatal("resumed download differs")
	}
	if len(ranges) != 2 || ranges[1] != "bytes=100000-" {
		t.Errorf("requests' Range headers %q, want a resumption from byte 100000", ranges)
	}
}

// TestFetchRefusals: each bad manifest or bad download server is refused
// with the reason, and nothing is left in the directory.
func TestFetchRefusals(t *testing.T) {
	k1, k2, stranger := newTestKey(t), newTestKey(t), newTestKey(t)
	body := []byte(strings.Repeat("vigil plugin binary ", 1000))
	m := manifestFor("procmon", "1.1.0", body)
	good := artifactServer(t, body, m.SHA256)
	serve := func(h http.HandlerFunc) string {
		s := httptest.NewServer(h)
		t.Cleanup(s.Close)
		return s.URL
	}
	signedTwiceBySameKey := func() []byte {
		s := signing.SignedManifest{Manifest: m}
		if err := s.Sign(k1.sec); err != nil {
			t.Fatal(err)
		}
		s.Signatures = append(s.Signatures, s.Signatures[0])
		b, _ := s.Marshal()
		return b
	}
	tamper := func(b []byte) []byte {
		// Change a signed field, keep the signatures.
		s, err := signing.ParseManifest(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		s.Manifest.Version = "1.9.0"
		out, _ := s.Marshal()
		return out
	}
	mod := func(f func(*signing.Manifest)) signing.Manifest {
		x := m
		f(&x)
		return x
	}
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	cases := []struct {
		name     string
		manifest []byte
		url      string
		expect   func(*signing.Expect)
		want     error
		wantText string
	}{
		{name: "unknown key", manifest: signManifest(t, m, stranger, k1), want: signing.ErrThreshold, wantText: "untrusted keys"},
		{name: "bad signature", manifest: tamper(signManifest(t, m, k1, k2)), want: signing.ErrBadSignature},
		{name: "no signature", manifest: signManifest(t, m), want: signing.ErrNoSignature},
		{name: "fewer than threshold", manifest: signManifest(t, m, k1), want: signing.ErrThreshold},
		{name: "same key twice", manifest: signedTwiceBySameKey(), want: signing.ErrThreshold},
		{name: "expired", manifest: signManifest(t, mod(func(x *signing.Manifest) { x.Expires = testNow.Add(-time.Minute) }), k1, k2), want: signing.ErrExpired},
		{name: "downgrade", manifest: signManifest(t, mod(func(x *signing.Manifest) { x.Version = "0.9.0" }), k1, k2), want: signing.ErrDowngrade},
		{name: "other plugin", manifest: signManifest(t, mod(func(x *signing.Manifest) { x.Plugin = "netmon" }), k1, k2), want: signing.ErrWrongPlugin},
		{name: "other platform", manifest: signManifest(t, mod(func(x *signing.Manifest) { x.Arch = "arm64" }), k1, k2), want: signing.ErrWrongPlatform},
		{name: "host too old", manifest: signManifest(t, mod(func(x *signing.Manifest) { x.MinHostVersion = "2.0.0" }), k1, k2), want: signing.ErrHostTooOld},
		{name: "malformed", manifest: []byte(`{"manifest":`), want: signing.ErrMalformed},
		{name: "tampered binary", manifest: signManifest(t, m, k1, k2), want: signing.ErrHashMismatch,
			url: serve(func(w http.ResponseWriter, r *http.Request) {
				b := bytes.Clone(body)
				b[10] ^= 1
				w.Write(b)
			})},
		{name: "garbage", manifest: signManifest(t, m, k1, k2), want: signing.ErrLengthMismatch, wantText: "longer than the signed length",
			url: serve(func(w http.ResponseWriter, r *http.Request) {
				w.Write([]byte("<html>" + strings.Repeat("garbage", 10000)))
			})},
		{name: "oversized", manifest: signManifest(t, m, k1, k2), want: signing.ErrLengthMismatch, wantText: "longer",
			url: serve(func(w http.ResponseWriter, r *http.Request) {
				w.Write(append(bytes.Clone(body), 'x'))
			})},
		{name: "endless", manifest: signManifest(t, m, k1, k2), want: signing.ErrLengthMismatch, wantText: "longer",
			url: serve(func(w http.ResponseWriter, r *http.Request) {
				for range 1000 {
					if _, err := w.Write(body); err != nil {
						return
					}
				}
			})},
		{name: "truncated", manifest: signManifest(t, m, k1, k2), want: signing.ErrLengthMismatch, wantText: "truncated",
			url: serve(func(w http.ResponseWriter, r *http.Request) {
				w.Write(body[:len(body)/2]) // ignores Range, always the same half
			})},
		{name: "hangs", manifest: signManifest(t, m, k1, k2), want: ErrDownload, wantText: "no data for",
			url: serve(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusOK)
				w.Write(body[:10])
				w.(http.Flusher).Flush()
				select {
				case <-hang:
				case <-r.Context().Done():
				}
			})},
		{name: "hangs before headers", manifest: signManifest(t, m, k1, k2), want: ErrDownload, wantText: "no data for",
			url: serve(func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-hang:
				case <-r.Context().Done():
				}
			})},
		{name: "server error", manifest: signManifest(t, m, k1, k2), want: ErrDownload, wantText: "500",
			url: serve(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) })},
		{name: "not found", manifest: signManifest(t, m, k1, k2), want: ErrDownload, wantText: "404", url: good.URL + "/nowhere"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			url := tc.url
			if url == "" {
				url = good.URL
			}
			want := expectFor("procmon")
			if tc.expect != nil {
				tc.expect(&want)
			}
			path, _, err := Fetch(context.Background(), Request{
				Manifest: tc.manifest, Trust: testTrust(t, 2, k1, k2), Expect: want, Source: fastSource(url), Dir: dir,
			})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.wantText) {
				t.Fatalf("error %v, want %v containing %q", err, tc.want, tc.wantText)
			}
			if path != "" {
				t.Errorf("path %q returned with an error", path)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Errorf("left behind: %v", ents)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// TestFetchSignedRollback: a lower version installs when its manifest
// carries a signed rollback.
func TestFetchSignedRollback(t *testing.T) {
	k := newTestKey(t)
	body := []byte("old but good")
	m := manifestFor("procmon", "0.9.0", body)
	m.Rollback = true
	srv := artifactServer(t, body, m.SHA256)
	path, v, err := Fetch(context.Background(), Request{
		Manifest: signManifest(t, m, k), Trust: testTrust(t, 1, k),
		Expect: expectFor("procmon"), Source: fastSource(srv.URL), Dir: t.TempDir(),
	})
	if err != nil || !v.Manifest.Rollback {
		t.Fatalf("signed rollback refused: %v", err)
	}
	os.Remove(path)
}

func FuzzRangeStart(f *testing.F) {
	for _, s := range []string{"bytes 100-199/200", "bytes 0-0/1", "bytes -5/10", "bytes */200", "items 1-2/3", "bytes 9223372036854775807-1/2", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, ok := rangeStart(s)
		if ok && (n < 0 || !strings.HasPrefix(s, "bytes ")) {
			t.Fatalf("rangeStart(%q) = %d, true", s, n)
		}
	})
}

func FuzzLoadState(f *testing.F) {
	f.Add([]byte(`{"plugins":{"procmon":{"current":{"version":"1.1.0","path":"/x","sha256":"ab"},"highest":"1.1.0"}},"keyring_serial":2}`))
	f.Add([]byte(`{"plugins":null}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"plugins":{"x":null}}`))
	f.Add([]byte(`{"plugins":{"x":{"current":{"version":"v1","path":"rel","sha256":"zz"}}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(dir+"/"+stateFile, b, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := loadState(dir)
		if s.Plugins == nil {
			t.Fatalf("nil plugin map (err %v)", err)
		}
		for name, r := range s.Plugins {
			if r == nil || r.validate() != nil {
				t.Fatalf("invalid record %q accepted", name)
			}
		}
	})
}

// TestFetchWithKeyring: hosts that pin only root keys believe the release
// keys a root-signed keyring lists; an expired keyring, one signed by an
// unknown root, or one older than a serial already accepted is refused.
func TestFetchWithKeyring(t *testing.T) {
	root, stranger, k1, k2 := newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t)
	roots := testTrust(t, 1, root).Keys
	body := []byte("plugin from a keyring-listed key")
	m := manifestFor("procmon", "1.1.0", body)
	srv := artifactServer(t, body, m.SHA256)
	keyring := func(signer testKey, serial uint64, expires time.Time) *signing.SignedKeyring {
		kr := signing.SignedKeyring{Keyring: signing.Keyring{Serial: serial, Expires: expires, Threshold: 2,
			Keys: []string{k1.pub.String(), k2.pub.String()}}}
		if err := kr.Sign(signer.sec); err != nil {
			t.Fatal(err)
		}
		return &kr
	}
	for _, tc := range []struct {
		name      string
		kr        *signing.SignedKeyring
		minSerial uint64
		want      error
	}{
		{name: "good", kr: keyring(root, 3, testNow.Add(time.Hour))},
		{name: "expired keyring", kr: keyring(root, 3, testNow.Add(-time.Hour)), want: signing.ErrKeyringExpired},
		{name: "unknown root", kr: keyring(stranger, 3, testNow.Add(time.Hour)), want: signing.ErrKeyringUnsigned},
		{name: "older keyring", kr: keyring(root, 3, testNow.Add(time.Hour)), minSerial: 4, want: signing.ErrKeyringRollback},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := expectFor("procmon")
			want.MinKeyringSerial = tc.minSerial
			tr := Trust{Roots: roots, Keyring: tc.kr}
			path, _, err := Fetch(context.Background(), Request{Manifest: signManifest(t, m, k1, k2), Trust: tr,
				Expect: want, Source: fastSource(srv.URL), Dir: t.TempDir()})
			if !errors.Is(err, tc.want) || (tc.want == nil && path == "") {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if tc.want == nil && tr.KeyringSerial() != 3 {
				t.Errorf("KeyringSerial = %d", tr.KeyringSerial())
			}
		})
	}
}

// TestInstallDirRefusals: a release is not installed below a directory
// others may write to, nor into one another user owns.
func TestInstallDirRefusals(t *testing.T) {
	base := t.TempDir()
	open := base + "/open"
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o777)
	if err := mkdir0755(open + "/plugins/procmon"); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Errorf("below a world-writable dir: %v", err)
	}
	if os.Geteuid() == 0 {
		foreign := base + "/foreign"
		if err := os.Mkdir(foreign, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(foreign, 12345, 12345); err != nil {
			t.Fatal(err)
		}
		if err := mkdir0755(foreign); err == nil || !strings.Contains(err.Error(), "belongs to uid 12345") {
			t.Errorf("a directory of another user: %v", err)
		}
	}
	if err := mkdir0755(base + "/ok/plugins"); err != nil {
		t.Errorf("a fresh directory: %v", err)
	}
}

// TestSpread: a host's moment is stable, inside the window, and a fleet's
// moments cover the window evenly.
func TestSpread(t *testing.T) {
	window := 10 * time.Minute
	if Spread("h1", "procmon", "1.2.0", window) != Spread("h1", "procmon", "1.2.0", window) {
		t.Fatal("Spread is not stable")
	}
	if Spread("h1", "procmon", "1.2.0", 0) != 0 {
		t.Error("no window must mean no wait")
	}
	var buckets [10]int
	for i := range 10000 {
		d := Spread(fmt.Sprintf("host-%05d", i), "procmon", "1.2.0", window)
		if d < 0 || d >= window {
			t.Fatalf("moment %s outside the window", d)
		}
		buckets[d*10/window]++
	}
	for i, n := range buckets {
		if n < 800 || n > 1200 {
			t.Errorf("tenth %d of the window holds %d of 10000 hosts, want about 1000 (%v)", i, n, buckets)
		}
	}
}
