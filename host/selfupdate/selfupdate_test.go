package selfupdate_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"
	minio "github.com/minio/selfupdate"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/selfupdate"
	"github.com/vigil-hids/vigil/sdk/sdktest"
	"github.com/vigil-hids/vigil/signing"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type keys struct {
	pub   minisign.PublicKey
	sec   minisign.PrivateKey
	trust signing.Trust
}

func newKeys(t *testing.T) keys {
	t.Helper()
	pub, sec, err := signing.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := signing.NewTrust(1, pub)
	if err != nil {
		t.Fatal(err)
	}
	return keys{pub, sec, trust}
}

// bundle writes content as a vigil-host release bundle signed by sec.
func bundle(t *testing.T, sec minisign.PrivateKey, content []byte, edit func(*signing.Manifest)) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "src")
	if err := os.WriteFile(bin, content, 0o755); err != nil {
		t.Fatal(err)
	}
	m := signing.Manifest{Plugin: api.HostReleaseName, Version: "1.1.0", OS: runtime.GOOS, Arch: runtime.GOARCH,
		Expires: t0.Add(24 * time.Hour), MinHostVersion: "1.0.0"}
	if edit != nil {
		edit(&m)
	}
	b := filepath.Join(dir, "bundle")
	if _, err := signing.CreateBundle(b, bin, m); err != nil {
		t.Fatal(err)
	}
	if _, err := signing.SignBundle(b, sec); err != nil {
		t.Fatal(err)
	}
	return b
}

// host is a directory with an installed "vigil-host" binary.
type host struct {
	dir, target string
	clock       *sdktest.FakeClock
	trust       signing.Trust
}

func newHost(t *testing.T, trust signing.Trust, content []byte) *host {
	t.Helper()
	dir := t.TempDir()
	target := filepath.Join(dir, "vigil-host")
	if err := os.WriteFile(target, content, 0o755); err != nil {
		t.Fatal(err)
	}
	return &host{dir: dir, target: target, clock: sdktest.NewFakeClock(t0), trust: trust}
}

func (h *host) updater(t *testing.T, running string) *selfupdate.Updater {
	t.Helper()
	u, err := selfupdate.New(selfupdate.Config{Target: h.target, Running: running, Trust: h.trust, Clock: h.clock,
		Window: time.Minute, Settle: 5 * time.Second, CheckEvery: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func (h *host) content(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(h.target)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func install(t *testing.T, u *selfupdate.Updater, dir string) (selfupdate.Trial, error) {
	t.Helper()
	r, err := selfupdate.BundleRelease(dir)
	if err != nil {
		t.Fatal(err)
	}
	return u.Install(r)
}

func TestInstallTrialPass(t *testing.T) {
	k := newKeys(t)
	h := newHost(t, k.trust, []byte("old binary 1.0.0"))
	u := h.updater(t, "1.0.0")
	tr, err := install(t, u, bundle(t, k.sec, []byte("new binary 1.1.0"), nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := h.content(t); got != "new binary 1.1.0" {
		t.Fatalf("target after install = %q", got)
	}
	if b, _ := os.ReadFile(tr.PreviousPath); string(b) != "old binary 1.0.0" {
		t.Fatalf("kept previous = %q", b)
	}
	if fi, _ := os.Stat(h.target); fi.Mode().Perm() != 0o755 {
		t.Fatalf("target mode %v", fi.Mode())
	}
	if _, err := os.Stat(filepath.Join(h.dir, ".vigil-host.new")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("staged file left behind: %v", err)
	}

	// The new binary starts: a trial.
	u2 := h.updater(t, "1.1.0")
	out, err := u2.Startup()
	if err != nil {
		t.Fatal(err)
	}
	if out.Trial == nil || out.RolledBack || out.Trial.Starts != 1 || out.Trial.Previous != "1.0.0" {
		t.Fatalf("startup = %+v", out)
	}
	// Unhealthy for a while, then healthy for Settle.
	n := 0
	err = u2.Gate(context.Background(), *out.Trial, func() error {
		n++
		if n < 4 {
			return errors.New("plugins starting")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := u2.State()
	if st.Trial != nil || st.Last == nil || st.Last.State != api.UpdateInstalled || st.Last.Running != "1.1.0" {
		t.Fatalf("state after gate = %+v", st)
	}
	// A restart afterwards is an ordinary start.
	out, err = h.updater(t, "1.1.0").Startup()
	if err != nil || out.Trial != nil || out.RolledBack || out.Last.State != api.UpdateInstalled {
		t.Fatalf("later start = %+v, %v", out, err)
	}
}

func TestRefusalsLeaveRunningBinary(t *testing.T) {
	k := newKeys(t)
	other := newKeys(t)
	tests := []struct {
		name    string
		running string
		bundle  func(t *testing.T) string
		want    error
	}{
		{"unknown key", "1.0.0", func(t *testing.T) string { return bundle(t, other.sec, []byte("evil"), nil) }, signing.ErrThreshold},
		{"tampered binary", "1.0.0", func(t *testing.T) string {
			b := bundle(t, k.sec, []byte("new binary 1.1.0"), nil)
			if err := os.WriteFile(filepath.Join(b, "binary"), []byte("new binary 1.1.X"), 0o755); err != nil {
				t.Fatal(err)
			}
			return b
		}, signing.ErrHashMismatch},
		{"truncated binary", "1.0.0", func(t *testing.T) string {
			b := bundle(t, k.sec, []byte("new binary 1.1.0"), nil)
			if err := os.WriteFile(filepath.Join(b, "binary"), []byte("new"), 0o755); err != nil {
				t.Fatal(err)
			}
			return b
		}, signing.ErrLengthMismatch},
		{"bad minisig of the binary", "1.0.0", func(t *testing.T) string {
			b := bundle(t, k.sec, []byte("new binary 1.1.0"), nil)
			// The same key's signature of other bytes: the manifest is fine,
			// selfupdate's minisign verifier must refuse.
			o := bundle(t, k.sec, []byte("something else"), nil)
			id := signing.KeyID(k.pub.ID())
			sig, err := os.ReadFile(signing.BinarySignaturePath(o, id))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(signing.BinarySignaturePath(b, id), sig, 0o644); err != nil {
				t.Fatal(err)
			}
			return b
		}, selfupdate.ErrBinarySignature},
		{"downgrade", "1.2.0", func(t *testing.T) string { return bundle(t, k.sec, []byte("new binary 1.1.0"), nil) }, signing.ErrDowngrade},
		{"expired", "1.0.0", func(t *testing.T) string {
			return bundle(t, k.sec, []byte("new"), func(m *signing.Manifest) { m.Expires = t0.Add(-time.Second) })
		}, signing.ErrExpired},
		{"another plugin", "1.0.0", func(t *testing.T) string {
			return bundle(t, k.sec, []byte("new"), func(m *signing.Manifest) { m.Plugin = "procmon" })
		}, signing.ErrWrongPlugin},
		{"another arch", "1.0.0", func(t *testing.T) string {
			return bundle(t, k.sec, []byte("new"), func(m *signing.Manifest) { m.Arch = "riscv64" })
		}, signing.ErrWrongPlatform},
		{"host too old", "1.0.0", func(t *testing.T) string {
			return bundle(t, k.sec, []byte("new"), func(m *signing.Manifest) { m.MinHostVersion = "1.0.5" })
		}, signing.ErrHostTooOld},
		{"dev build", "dev", func(t *testing.T) string { return bundle(t, k.sec, []byte("new"), nil) }, selfupdate.ErrNotRelease},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t, k.trust, []byte("running binary"))
			u := h.updater(t, tc.running)
			_, err := install(t, u, tc.bundle(t))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if got := h.content(t); got != "running binary" {
				t.Fatalf("target changed to %q", got)
			}
			ents, _ := os.ReadDir(h.dir)
			if len(ents) != 1 {
				var names []string
				for _, e := range ents {
					names = append(names, e.Name())
				}
				t.Fatalf("files left next to the target: %v", names)
			}
		})
	}
}

func TestSignedRollbackInstalls(t *testing.T) {
	k := newKeys(t)
	h := newHost(t, k.trust, []byte("running 1.2.0"))
	b := bundle(t, k.sec, []byte("older 1.1.0"), func(m *signing.Manifest) { m.Rollback = true })
	if _, err := install(t, h.updater(t, "1.2.0"), b); err != nil {
		t.Fatal(err)
	}
	if got := h.content(t); got != "older 1.1.0" {
		t.Fatalf("target = %q", got)
	}
}

// A trial binary that crashes at start is started again by systemd; its
// second start rolls back, and the previous binary reports why.
func TestCrashedTrialRollsBack(t *testing.T) {
	k := newKeys(t)
	h := newHost(t, k.trust, []byte("good 1.0.0"))
	if _, err := install(t, h.updater(t, "1.0.0"), bundle(t, k.sec, []byte("crashy 1.1.0"), nil)); err != nil {
		t.Fatal(err)
	}
	if out, err := h.updater(t, "1.1.0").Startup(); err != nil || out.Trial == nil {
		t.Fatalf("first start = %+v, %v", out, err)
	}
	// ... it crashes; the second start:
	out, err := h.updater(t, "1.1.0").Startup()
	if err != nil || !out.RolledBack {
		t.Fatalf("second start = %+v, %v", out, err)
	}
	if got := h.content(t); got != "good 1.0.0" {
		t.Fatalf("target after rollback = %q", got)
	}
	// The previous binary comes back and reports.
	u := h.updater(t, "1.0.0")
	out, err = u.Startup()
	if err != nil || out.Trial != nil || out.RolledBack {
		t.Fatalf("previous start = %+v, %v", out, err)
	}
	if out.Last.State != api.UpdateRolledBack || out.Last.Target != "1.1.0" || !strings.Contains(out.Last.Error, "crashed before it became healthy") {
		t.Fatalf("last = %+v", out.Last)
	}
	if _, err := u.Check("1.1.0"); !errors.Is(err, selfupdate.ErrFailedBefore) {
		t.Fatalf("check of the rolled-back version: %v", err)
	}
	if skip, err := u.Check("1.1.1"); err != nil || skip != "" {
		t.Fatalf("check of a newer version: %q, %v", skip, err)
	}
}

func TestUnhealthyTrialRollsBack(t *testing.T) {
	k := newKeys(t)
	h := newHost(t, k.trust, []byte("good 1.0.0"))
	if _, err := install(t, h.updater(t, "1.0.0"), bundle(t, k.sec, []byte("sick 1.1.0"), nil)); err != nil {
		t.Fatal(err)
	}
	u := h.updater(t, "1.1.0")
	out, err := u.Startup()
	if err != nil || out.Trial == nil {
		t.Fatal(out, err)
	}
	err = u.Gate(context.Background(), *out.Trial, func() error { return errors.New("plugin example: quarantined") })
	if !errors.Is(err, selfupdate.ErrRolledBack) || !strings.Contains(err.Error(), "plugin example: quarantined") {
		t.Fatalf("gate = %v", err)
	}
	if got := h.content(t); got != "good 1.0.0" {
		t.Fatalf("target = %q", got)
	}
	out, err = h.updater(t, "1.0.0").Startup()
	if err != nil || out.Last.State != api.UpdateRolledBack || !strings.Contains(out.Last.Error, "not healthy within its window") {
		t.Fatalf("previous start = %+v, %v", out.Last, err)
	}
}

// A host stopped while the gate runs leaves the marker: the next start of
// the trial binary counts as its second and rolls back.
func TestGateCancelledKeepsMarker(t *testing.T) {
	k := newKeys(t)
	h := newHost(t, k.trust, []byte("good 1.0.0"))
	if _, err := install(t, h.updater(t, "1.0.0"), bundle(t, k.sec, []byte("new 1.1.0"), nil)); err != nil {
		t.Fatal(err)
	}
	u := h.updater(t, "1.1.0")
	out, _ := u.Startup()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := u.Gate(ctx, *out.Trial, func() error { return errors.New("not yet") }); !errors.Is(err, context.Canceled) {
		t.Fatalf("gate = %v", err)
	}
	if out, _ := h.updater(t, "1.1.0").Startup(); !out.RolledBack {
		t.Fatalf("restart during the trial did not roll back: %+v", out)
	}
}

// minio/selfupdate's CommitBinary renames the target away and then the new
// file in; a crash between the two leaves no target. Recover restores it.
func TestRecoverBetweenRenames(t *testing.T) {
	for _, keep := range []bool{true, false} {
		name := map[bool]string{true: "kept previous", false: "selfupdate old copy only"}[keep]
		t.Run(name, func(t *testing.T) {
			k := newKeys(t)
			h := newHost(t, k.trust, []byte("good 1.0.0"))
			if keep {
				if err := os.Link(h.target, filepath.Join(h.dir, ".vigil-host.prev")); err != nil {
					t.Fatal(err)
				}
			}
			if err := minio.PrepareAndCheckBinary(bytes.NewReader([]byte("new 1.1.0")), minio.Options{TargetPath: h.target}); err != nil {
				t.Fatal(err)
			}
			// CommitBinary's first rename, then the crash.
			if err := os.Rename(h.target, filepath.Join(h.dir, ".vigil-host.old")); err != nil {
				t.Fatal(err)
			}
			msg, err := h.updater(t, "1.0.0").Recover()
			if err != nil {
				t.Fatal(err)
			}
			if got := h.content(t); got != "good 1.0.0" {
				t.Fatalf("target = %q (%s)", got, msg)
			}
			if _, err := os.Stat(filepath.Join(h.dir, ".vigil-host.new")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("staged file not removed: %v", err)
			}
			if !strings.Contains(msg, "restored") {
				t.Fatalf("recover said %q", msg)
			}
		})
	}
}

// The marker was written but the swap did not happen: the old binary runs,
// drops the marker and reports the failed install.
func TestInterruptedBeforeSwap(t *testing.T) {
	k := newKeys(t)
	h := newHost(t, k.trust, []byte("good 1.0.0"))
	st := `{"trial":{"version":"1.1.0","sha256":"","previous":"1.0.0","previous_path":"` + filepath.Join(h.dir, ".vigil-host.prev") +
		`","installed_at":"2026-11-25T12:00:00Z","deadline":"2026-11-25T12:01:00Z","starts":0}}`
	if err := os.WriteFile(filepath.Join(h.dir, ".vigil-host.update.json"), []byte(st), 0o600); err != nil {
		t.Fatal(err)
	}
	u := h.updater(t, "1.0.0")
	out, err := u.Startup()
	if err != nil || out.Trial != nil || out.RolledBack || out.Last.State != api.UpdateFailed {
		t.Fatalf("startup = %+v, %v", out, err)
	}
	if skip, err := u.Check("1.1.0"); err != nil || skip != "" {
		t.Fatalf("an interrupted install must be retried: %q, %v", skip, err)
	}
}

func TestParseStateRefuses(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"unknown field", `{"trial":null,"x":1}`, "unknown field"},
		{"trailing", `{} {}`, "trailing data"},
		{"trial without version", `{"trial":{"previous_path":"/p"}}`, "trial.version must be set"},
		{"negative starts", `{"trial":{"version":"1.0.0","previous_path":"/p","starts":-1}}`, "trial.starts must be at least 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := selfupdate.ParseState(strings.NewReader(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"trial":{"version":"1.1.0","sha256":"ab","previous":"1.0.0","previous_path":"/usr/bin/.vigil-host.prev","installed_at":"2026-11-25T12:00:00Z","deadline":"2026-11-25T12:02:00Z","starts":1},"last":{"target":"1.1.0","state":"health-check","at":"2026-11-25T12:00:00Z"},"failed":{"1.0.9":"crashed"}}`))
	f.Add([]byte(`{"trial":{"version":"","previous_path":""}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := selfupdate.ParseState(bytes.NewReader(b))
		if err != nil {
			return
		}
		if s.Trial != nil && (s.Trial.Version == "" || s.Trial.PreviousPath == "" || s.Trial.Starts < 0) {
			t.Fatalf("invalid trial accepted: %+v", s.Trial)
		}
	})
}
