package ingest

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/vigil-hids/vigil/vuln/inventory"
	"github.com/vigil-hids/vigil/vuln/version"
)

func sample() *Upload {
	inv := inventory.Inventory{Ecosystem: "dpkg", OS: inventory.OS{ID: "debian", VersionID: "12"},
		Packages: []inventory.Package{{Name: "libssl3", Version: "3.0.11-1~deb12u2", Source: "openssl"}}}
	return &Upload{Host: "web-1", Digest: inv.Digest(), Inventory: inv}
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

func TestDecodeUpload(t *testing.T) {
	good, _ := json.Marshal(sample())
	tests := []struct {
		name    string
		body    []byte
		gzipped bool
		max     int64
		want    error
		msg     string
	}{
		{name: "plain", body: good},
		{name: "gzip", body: gz(good), gzipped: true},
		{name: "not gzip", body: good, gzipped: true, want: ErrInvalid, msg: "not gzip"},
		{name: "malformed", body: []byte(`{"host": "web-1", `), want: ErrInvalid, msg: "malformed JSON"},
		{name: "trailing", body: append(append([]byte{}, good...), []byte(`{}`)...), want: ErrInvalid, msg: "data after the object"},
		{name: "unknown field", body: []byte(`{"host":"web-1","digest":"x","extra":1}`), want: ErrInvalid, msg: `unknown field "extra"`},
		{name: "bad host", body: bytes.Replace(good, []byte(`"web-1"`), []byte(`"web 1/../x"`), 1), want: ErrInvalid, msg: "not a valid host name"},
		{name: "bad digest", body: bytes.Replace(good, []byte(`"sha256:`), []byte(`"md5:`), 1), want: ErrInvalid, msg: "digest must be sha256:"},
		{name: "unknown ecosystem", body: bytes.Replace(good, []byte(`"dpkg"`), []byte(`"pacman"`), 1), want: ErrInvalid, msg: `ecosystem "pacman" is unknown`},
		{name: "empty version", body: bytes.Replace(good, []byte(`"3.0.11-1~deb12u2"`), []byte(`""`), 1), want: ErrInvalid, msg: "packages[0] (\"libssl3\"): version is empty"},
		{name: "too large", body: good, max: 10, want: ErrTooLarge, msg: "larger than 10 bytes"},
		{name: "gzip bomb", body: gz(bytes.Repeat([]byte(" "), 1<<20)), gzipped: true, max: 1 << 16, want: ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := DecodeUpload(bytes.NewReader(tt.body), tt.gzipped, tt.max)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if u.Host != "web-1" || len(u.Inventory.Packages) != 1 || u.Inventory.Digest() != u.Digest {
					t.Fatalf("decoded %+v", u)
				}
				return
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %v, want %v containing %q", err, tt.want, tt.msg)
			}
		})
	}
}

func TestDecodeDigest(t *testing.T) {
	d := sample().Digest
	if r, err := DecodeDigest(strings.NewReader(`{"host":"web-1","digest":"` + d + `"}`)); err != nil || r.Digest != d {
		t.Fatalf("%+v %v", r, err)
	}
	for _, body := range []string{`{"host":"web-1","digest":"sha256:ABC"}`, `{"host":"","digest":"` + d + `"}`, `[]`, `{"host":"web-1","digest":"` + d + `","x":1}`} {
		if _, err := DecodeDigest(strings.NewReader(body)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: error %v, want ErrInvalid", body, err)
		}
	}
}

// FuzzDecodeUpload: the decoder never panics, and whatever it accepts
// has a valid host, digest form and ecosystem, and digests without error.
func FuzzDecodeUpload(f *testing.F) {
	good, _ := json.Marshal(sample())
	f.Add(good, false)
	f.Add(gz(good), true)
	f.Add([]byte(`{"host":"h","digest":"sha256:`+strings.Repeat("0", 64)+`","inventory":{"ecosystem":"rpm","packages":[{"name":"a","version":"1:2-3"}]}}`), false)
	f.Add([]byte(`{"inventory":{"packages":null}}`), false)
	f.Add([]byte{0x1f, 0x8b, 8, 0}, true)
	f.Fuzz(func(t *testing.T, b []byte, gzipped bool) {
		u, err := DecodeUpload(bytes.NewReader(b), gzipped, 1<<20)
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error %v wraps neither ErrInvalid nor ErrTooLarge", err)
			}
			return
		}
		if u.Inventory.Kind() == version.Unknown || !digestRE.MatchString(u.Digest) {
			t.Fatalf("accepted %+v", u)
		}
		_ = u.Inventory.Digest()
	})
}
