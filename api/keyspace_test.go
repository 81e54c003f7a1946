package api

import (
	"strings"
	"testing"
)

func TestReleaseKeys(t *testing.T) {
	ks := NewKeyspace("/hids/")
	if got := ks.Release("procmon", "1.2.0", "linux", "arm64"); got != "/hids/releases/procmon/1.2.0/linux/arm64" {
		t.Fatalf("Release = %s", got)
	}
	if got := ks.ReleaseVersion("procmon", "1.2.0"); got != "/hids/releases/procmon/1.2.0/" {
		t.Fatalf("ReleaseVersion = %s", got)
	}
	tests := []struct {
		name, key string
		ok        bool
		parts     [4]string
	}{
		{"platform key", "/hids/releases/procmon/1.2.0+rollback.1/linux/arm64", true, [4]string{"procmon", "1.2.0+rollback.1", "linux", "arm64"}},
		{"single-platform key of older releases", "/hids/releases/procmon/1.2.0", false, [4]string{}},
		{"too deep", "/hids/releases/procmon/1.2.0/linux/arm64/x", false, [4]string{}},
		{"empty segment", "/hids/releases/procmon/1.2.0//arm64", false, [4]string{}},
		{"other prefix", "/other/releases/procmon/1.2.0/linux/arm64", false, [4]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, v, o, a, ok := ks.ParseRelease(tt.key)
			if ok != tt.ok || [4]string{p, v, o, a} != tt.parts {
				t.Fatalf("ParseRelease(%q) = %q %q %q %q %v", tt.key, p, v, o, a, ok)
			}
		})
	}
}

// FuzzParseRelease: any key parses without panicking, and the key of any
// four one-segment parts parses back into them.
func FuzzParseRelease(f *testing.F) {
	f.Add("procmon", "1.2.0", "linux", "arm64", "/hids/releases/procmon/1.2.0")
	f.Add("vigil-host", "1.2.0+rollback.1", "linux", "amd64", "/hids/releases//x///")
	ks := NewKeyspace("")
	f.Fuzz(func(t *testing.T, plugin, version, os, arch, key string) {
		ks.ParseRelease(key)
		for _, s := range []string{plugin, version, os, arch} {
			if s == "" || strings.Contains(s, "/") {
				return
			}
		}
		p, v, o, a, ok := ks.ParseRelease(ks.Release(plugin, version, os, arch))
		if !ok || p != plugin || v != version || o != os || a != arch {
			t.Fatalf("%q %q %q %q parsed back as %q %q %q %q %v", plugin, version, os, arch, p, v, o, a, ok)
		}
	})
}
