package registry

import (
	"testing"

	"github.com/vigil-hids/vigil/api"
)

func TestDecodeKeepsReleases(t *testing.T) {
	v := []byte(`{"host":"a","version":"1.0.0","host_update":{"target":"1.1.0","state":"failed","error":"boom","at":"2026-11-25T00:00:00Z"},
		"plugins":{"procmon":{"version":"2.0.0","state":"running"},"netmon":{"state":"running","update":{"target":"3.0.0","state":"downloading","at":"2026-11-25T00:00:00Z"}}}}`)
	h := decode("a", v)
	if h.Mismatch || len(h.Releases) != 3 {
		t.Fatalf("decoded %+v", h)
	}
	want := []Release{
		{Name: "netmon", Target: "3.0.0", State: api.UpdateDownloading},
		{Name: "procmon", Version: "2.0.0"},
		{Name: api.HostReleaseName, Version: "1.0.0", Target: "1.1.0", State: api.UpdateFailed, Error: "boom"},
	}
	for i, w := range want {
		if h.Releases[i].Value() != w {
			t.Fatalf("release %d = %+v, want %+v", i, h.Releases[i].Value(), w)
		}
	}
	if r, ok := h.Release("procmon"); !ok || r.Version != "2.0.0" {
		t.Fatalf("Release(procmon) = %+v %v", r, ok)
	}
	if _, ok := h.Release("nosuch"); ok {
		t.Fatal("Release found a plugin the host does not report")
	}
	if h := decode("b", []byte(`{"host":"b"}`)); len(h.Releases) != 0 {
		t.Fatalf("a registration without versions has releases: %+v", h.Releases)
	}
}
