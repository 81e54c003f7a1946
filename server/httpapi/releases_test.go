package httpapi

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server/artifacts"
	"github.com/vigil-hids/vigil/server/rollout"
	"github.com/vigil-hids/vigil/server/store"
	"github.com/vigil-hids/vigil/signing"
)

// upload builds a multipart body from parts given as name, content pairs.
func upload(t *testing.T, parts ...string) (string, []byte) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for i := 0; i < len(parts); i += 2 {
		w, err := mw.CreateFormFile(parts[i], parts[i])
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(w, parts[i+1])
	}
	_ = mw.Close()
	return mw.FormDataContentType(), b.Bytes()
}

func signedManifest(t *testing.T, sec minisign.PrivateKey, bin []byte, expires time.Time) string {
	t.Helper()
	sum := sha256.Sum256(bin)
	sm := signing.SignedManifest{Manifest: signing.Manifest{Plugin: "example", Version: "1.0.0", OS: "linux", Arch: "amd64",
		Length: int64(len(bin)), SHA256: hex.EncodeToString(sum[:]), Expires: expires, MinHostVersion: "0.1.0"}}
	if err := sm.Sign(sec); err != nil {
		t.Fatal(err)
	}
	raw, _ := sm.Marshal()
	return string(raw)
}

func TestPublishRefusals(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	st := store.New(e.Client(t), store.Options{Validate: catalog.Validate})
	arts, err := artifacts.Open(artifacts.Config{Dir: t.TempDir(), MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	pub, sec, _ := signing.GenerateKey(nil)
	_, stranger, _ := signing.GenerateKey(nil)
	trust, err := signing.NewTrust(1, pub)
	if err != nil {
		t.Fatal(err)
	}
	h := New(Options{Store: st, Releases: &ReleaseOptions{Artifacts: arts, Rollout: rollout.New(rollout.Options{Store: st}), Trust: &trust}})
	send := func(ctype string, body []byte) (int, Error, string) {
		r := httptest.NewRequest("POST", "/v1/releases", bytes.NewReader(body))
		r.Header.Set("Content-Type", ctype)
		c := &x509.Certificate{Subject: pkix.Name{CommonName: "alice", OrganizationalUnit: []string{"admin"}}}
		r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{c}}}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		var e Error
		_ = json.Unmarshal(w.Body.Bytes(), &e)
		return w.Code, e, w.Body.String()
	}
	bin := "binary"
	good := signedManifest(t, sec, []byte(bin), time.Now().Add(time.Hour))
	big := strings.Repeat("x", 2<<20)
	tests := []struct {
		name     string
		ctype    string
		parts    []string
		status   int
		contains string
	}{
		{name: "not multipart", ctype: "application/json", status: 400, contains: "publish wants multipart/form-data"},
		{name: "binary first", parts: []string{PartBinary, bin, PartManifest, good}, status: 400, contains: `the first part must be "manifest": got "binary"`},
		{name: "no binary", parts: []string{PartManifest, good}, status: 400, contains: `the second part must be "binary": the upload ends before it`},
		{name: "garbage manifest", parts: []string{PartManifest, "{", PartBinary, bin}, status: 400, contains: "signing: malformed input"},
		{name: "unknown key", parts: []string{PartManifest, signedManifest(t, stranger, []byte(bin), time.Now().Add(time.Hour)), PartBinary, bin},
			status: 400, contains: "the server's trust file refuses it"},
		{name: "expired", parts: []string{PartManifest, signedManifest(t, sec, []byte(bin), time.Now().Add(-time.Hour)), PartBinary, bin},
			status: 400, contains: "manifest expired"},
		{name: "tampered", parts: []string{PartManifest, good, PartBinary, "binarY"}, status: 400, contains: "content does not match the manifest"},
		{name: "over the cap", parts: []string{PartManifest, signedManifest(t, sec, []byte(big), time.Now().Add(time.Hour)), PartBinary, big},
			status: 413, contains: "over the cap of 1048576"},
		{name: "ok", parts: []string{PartManifest, good, PartBinary, bin}, status: 200, contains: `"result": "created"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctype, body := upload(t, tt.parts...)
			if tt.ctype != "" {
				ctype = tt.ctype
			}
			status, e, raw := send(ctype, body)
			if status != tt.status || !strings.Contains(e.Error+raw, tt.contains) {
				t.Fatalf("got %d %+v, want %d containing %q", status, e, tt.status, tt.contains)
			}
		})
	}
	if list, _ := arts.List(); len(list) != 1 {
		t.Fatalf("refused uploads left artifacts: %v", list)
	}
}
