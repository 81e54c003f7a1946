package update

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/supervisor"
	"github.com/vigil-hids/vigil/signing"
)

// BenchmarkVerify20MB: what the host checks before a 20 MB release may
// run: the manifest (2-of-2 signatures, expiry, platform, version) and
// the downloaded file's length and sha256, read from disk.
func BenchmarkVerify20MB(b *testing.B) {
	k1, k2 := newTestKey(b), newTestKey(b)
	body := make([]byte, 20<<20)
	rand.Read(body)
	m := manifestFor("procmon", "1.1.0", body)
	raw := signManifest(b, m, k1, k2)
	trust := testTrust(b, 2, k1, k2)
	path := filepath.Join(b.TempDir(), "binary")
	if err := os.WriteFile(path, body, 0o755); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for b.Loop() {
		v, err := VerifyManifest(raw, trust, expectFor("procmon"))
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := signing.VerifyBinary(v.Manifest, f); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}

// BenchmarkFetchInstall20MB: verify, download over loopback HTTP, check,
// fsync and rename a 20 MB release into its versioned directory.
func BenchmarkFetchInstall20MB(b *testing.B) {
	k1, k2 := newTestKey(b), newTestKey(b)
	body := make([]byte, 20<<20)
	rand.Read(body)
	m := manifestFor("procmon", "1.1.0", body)
	srv := newArtifactServer(b, body, m.SHA256)
	raw := signManifest(b, m, k1, k2)
	trust := testTrust(b, 2, k1, k2)
	dir := b.TempDir()
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for b.Loop() {
		pdir := filepath.Join(dir, "procmon")
		if err := mkdir0755(pdir); err != nil {
			b.Fatal(err)
		}
		tmp, v, err := Fetch(context.Background(), Request{Manifest: raw, Trust: trust, Expect: expectFor("procmon"),
			Source: Source{BaseURL: srv}, Dir: pdir})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Place(tmp, dir, v.Manifest); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(pdir)
		b.StartTimer()
	}
}

// BenchmarkHealthGateRollback: a release that passes the handshake and
// crashes 300 ms into Run, with a 1 s health window; rollback-ms is from
// the crash to the previous version running again (real plugin
// processes), gate-ms from asking for the version to the rolled-back
// report.
func BenchmarkHealthGateRollback(b *testing.B) {
	w := newWorld(b)
	u := w.updater(b)
	w.plugins.Refresh(tp)
	waitFor(b, "plugin running", func() bool { return w.plugins.status(b).State == supervisor.StateRunning })
	w.publish("1.1.0", release(b, "vigil-testplugin", "1.1.0"), nil)
	u.Want(tp, "1.1.0")
	waitState(b, u, "1.1.0", api.UpdateInstalled)
	crash := release(b, "crashplugin", "x")
	var rollback, gate time.Duration
	n := 0
	b.ResetTimer()
	for b.Loop() {
		n++
		v := fmt.Sprintf("1.2.%d", n)
		w.publish(v, append(bytes.Clone(crash), byte(n)), nil)
		start := time.Now()
		u.Want(tp, v)
		waitState(b, u, v, api.UpdateRolledBack)
		gate += time.Since(start)
		rollback += u.LastRollback(tp)
		waitFor(b, "1.1.0 running", func() bool {
			s := w.plugins.status(b)
			return s.State == supervisor.StateRunning && s.Path == BinaryPath(w.dir, tp, "1.1.0")
		})
	}
	b.ReportMetric(float64(rollback.Milliseconds())/float64(n), "rollback-ms")
	b.ReportMetric(float64(gate.Milliseconds())/float64(n), "gate-ms")
}
