package registry

import (
	"encoding/json"
	"testing"

	"github.com/vigil-hids/vigil/api"
)

func TestDecodeKeepsPlatform(t *testing.T) {
	for _, tc := range []struct {
		name, value, want string
	}{
		{"amd64", `{"host":"a","os":"linux","arch":"amd64"}`, "linux/amd64"},
		{"arm64", `{"host":"a","os":"linux","arch":"arm64","labels":{"env":"prod"}}`, "linux/arm64"},
		{"escaped", `{"host":"a","os":"lin\u0075x","arch":"arm64"}`, "linux/arm64"},
		{"old agent", `{"host":"a","version":"1.0.0"}`, UnknownPlatform},
		{"os only", `{"host":"a","os":"linux"}`, UnknownPlatform},
		{"null", `{"host":"a","os":null,"arch":"amd64"}`, UnknownPlatform},
		{"empty", `{"host":"a","os":"","arch":"amd64"}`, UnknownPlatform},
		{"undecodable", `{"host":`, UnknownPlatform},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := decode("a", []byte(tc.value)).Platform().String(); got != tc.want {
				t.Fatalf("platform of %s = %q, want %q", tc.value, got, tc.want)
			}
		})
	}
	if h := decode("a", []byte(`{"host":"a","os":5,"arch":"amd64"}`)); !h.Mismatch {
		t.Fatalf("an os that is not a string decoded: %+v", h)
	}
	// Hosts of one platform share it.
	a, b := decode("a", []byte(`{"os":"linux","arch":"arm64"}`)), decode("b", []byte(`{"os":"linux","arch":"arm64"}`))
	if a.platform != b.platform {
		t.Fatal("two hosts of linux/arm64 hold two platforms")
	}
}

// FuzzDecodePlatform: whatever os and arch a host writes, the index
// keeps exactly them.
func FuzzDecodePlatform(f *testing.F) {
	f.Add("linux", "amd64")
	f.Add("linux", "arm64")
	f.Add("", "amd64")
	f.Add(`li"n\ux`, "\x00\xff")
	f.Fuzz(func(t *testing.T, goos, arch string) {
		v, err := json.Marshal(api.Registration{Host: "h", OS: goos, Arch: arch})
		if err != nil {
			t.Fatal(err) // strings always encode (invalid UTF-8 becomes U+FFFD)
		}
		var back api.Registration
		if err := json.Unmarshal(v, &back); err != nil {
			t.Fatal(err)
		}
		h := decode("h", v)
		want := Platform{OS: back.OS, Arch: back.Arch}
		if back.OS == "" || back.Arch == "" {
			want = Platform{}
		}
		if h.Mismatch || h.Platform() != want {
			t.Fatalf("decoded %+v (mismatch %v) from %s, want %+v", h.Platform(), h.Mismatch, v, want)
		}
	})
}
