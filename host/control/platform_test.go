package control

import (
	"runtime"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
)

// TestRegistrationNamesPlatform: a real control loop registers with the
// os and arch it runs on, which rollout set counts hosts by.
func TestRegistrationNamesPlatform(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	cli := e.Client(t)
	cfg := testConfig(e.Endpoints(), "web-1")
	startLoop(t, cfg, &fakeApplier{status: map[string]api.PluginStatus{"procmon": {State: "running"}}})
	var reg api.Registration
	eventually(t, 10*time.Second, "host registered", func() bool {
		r, _, ok := getReg(t, cli, ks.Agent("web-1"))
		reg = r
		return ok && r.Plugins["procmon"].State == "running"
	})
	if reg.OS != runtime.GOOS || reg.Arch != runtime.GOARCH {
		t.Fatalf("registration platform %q/%q, want %s/%s", reg.OS, reg.Arch, runtime.GOOS, runtime.GOARCH)
	}
}

// TestSameReportComparesPlatform: a value that differs only in its
// platform is written again.
func TestSameReportComparesPlatform(t *testing.T) {
	a := &api.Registration{Host: "h", OS: "linux", Arch: "amd64"}
	b := *a
	if !sameReport(a, &b) {
		t.Fatal("identical registrations differ")
	}
	b.Arch = "arm64"
	if sameReport(a, &b) {
		t.Fatal("registrations of two platforms compare the same")
	}
}
