package update

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/supervisor"
	"github.com/vigil-hids/vigil/signing"
)

// signedKeyring returns keyring.json listing keys (threshold 1), signed by
// the given roots.
func signedKeyring(t testing.TB, serial uint64, expires time.Time, keys []testKey, roots ...testKey) []byte {
	t.Helper()
	kr := signing.SignedKeyring{Keyring: signing.Keyring{Serial: serial, Expires: expires, Threshold: 1}}
	for _, k := range keys {
		kr.Keyring.Keys = append(kr.Keyring.Keys, k.pub.String())
	}
	for _, r := range roots {
		if err := kr.Sign(r.sec); err != nil {
			t.Fatal(err)
		}
	}
	b, err := kr.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parsedKeyring(t testing.TB, raw []byte) *signing.SignedKeyring {
	t.Helper()
	kr, err := signing.ParseKeyring(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	return &kr
}

// releaseKeyIDs are the key ids of the release keys the store trusts now.
func releaseKeyIDs(t testing.TB, s *TrustStore) []string {
	t.Helper()
	tr, err := s.Release(testNow, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, k := range tr.Keys() {
		pub, err := signing.ParsePublicKey([]byte(k))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, signing.KeyID(pub.ID()))
	}
	return ids
}

func keyID(k testKey) string { return signing.KeyID(k.pub.ID()) }

// TestTrustStoreTakesNewerKeyring: a newer keyring signed by the pinned
// root replaces the one in use, is saved, and is where a restart starts;
// a keyring that fails any check is refused with a reason, reported, and
// changes nothing.
func TestTrustStoreTakesNewerKeyring(t *testing.T) {
	root, stranger, k1, k2, k3 := newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t)
	roots := testTrust(t, 1, root).Keys
	later := testNow.Add(24 * time.Hour)
	file := parsedKeyring(t, signedKeyring(t, 1, later, []testKey{k1}, root))
	dir := t.TempDir()
	s := NewTrustStore(Trust{Roots: roots, Keyring: file}, dir, nil)
	if st := s.Status(); st == nil || st.Serial != 1 || st.Error != "" {
		t.Fatalf("status at start %+v", st)
	}

	v2 := signedKeyring(t, 2, later, []testKey{k2}, root)
	changed, err := s.Offer(v2, testNow, 0)
	if !changed || err != nil {
		t.Fatalf("Offer(serial 2) = %v, %v", changed, err)
	}
	if ids := releaseKeyIDs(t, s); len(ids) != 1 || ids[0] != keyID(k2) {
		t.Errorf("release keys %v, want only k2 %s", ids, keyID(k2))
	}
	if st := s.Status(); st.Serial != 2 || st.Refused != 0 || !st.Expires.Equal(later) {
		t.Errorf("status %+v", st)
	}
	if st := s.Status(); st != s.Status() {
		t.Error("an unchanged status must be the same pointer")
	}
	if saved, err := os.ReadFile(filepath.Join(dir, savedKeyringFile)); err != nil || string(saved) != string(v2) {
		t.Errorf("saved keyring %q, %v", saved, err)
	}
	if changed, err := s.Offer(v2, testNow, 0); changed || err != nil {
		t.Errorf("the same keyring again: %v, %v", changed, err)
	}

	// A restart with the old keyring file starts from the saved serial 2.
	if got := NewTrustStore(Trust{Roots: roots, Keyring: file}, dir, nil).Trust().KeyringSerial(); got != 2 {
		t.Errorf("after a restart serial %d, want 2 (saved)", got)
	}

	for _, tc := range []struct {
		name      string
		raw       []byte
		minSerial uint64
		want      error
		refused   uint64
	}{
		{name: "not json", raw: []byte("{serial: 3"), want: signing.ErrMalformed},
		{name: "unknown field", raw: []byte(`{"keyring":{"serial":3},"colour":"red"}`), want: signing.ErrMalformed},
		{name: "signed by a stranger", raw: signedKeyring(t, 3, later, []testKey{k3}, stranger), want: signing.ErrKeyringUnsigned, refused: 3},
		{name: "unsigned", raw: signedKeyring(t, 3, later, []testKey{k3}), want: signing.ErrKeyringUnsigned, refused: 3},
		{name: "expired", raw: signedKeyring(t, 3, testNow.Add(-time.Minute), []testKey{k3}, root), want: signing.ErrKeyringExpired, refused: 3},
		{name: "older than in use", raw: signedKeyring(t, 1, later, []testKey{k3}, root), want: signing.ErrKeyringRollback, refused: 1},
		{name: "older than accepted before", raw: signedKeyring(t, 3, later, []testKey{k3}, root), minSerial: 4, want: signing.ErrKeyringRollback, refused: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			changed, err := s.Offer(tc.raw, testNow, tc.minSerial)
			if changed || !errors.Is(err, tc.want) {
				t.Fatalf("Offer = %v, %v; want %v", changed, err, tc.want)
			}
			st := s.Status()
			if st.Serial != 2 || st.Refused != tc.refused || st.Error != err.Error() {
				t.Errorf("status %+v", st)
			}
			if ids := releaseKeyIDs(t, s); len(ids) != 1 || ids[0] != keyID(k2) {
				t.Errorf("release keys changed to %v", ids)
			}
			if saved, _ := os.ReadFile(filepath.Join(dir, savedKeyringFile)); string(saved) != string(v2) {
				t.Error("the saved keyring changed")
			}
		})
	}

	// The keyring in use offered again clears the refusal.
	if _, err := s.Offer(v2, testNow, 0); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st.Serial != 2 || st.Error != "" || st.Refused != 0 {
		t.Errorf("status after the keyring in use %+v", st)
	}
}

// TestTrustStoreIgnoresKeyringWithPinnedKeys: pinned release keys are not
// replaced by any published keyring, and report no keyring.
func TestTrustStoreIgnoresKeyringWithPinnedKeys(t *testing.T) {
	root, k1 := newTestKey(t), newTestKey(t)
	s := NewTrustStore(testTrust(t, 1, k1), t.TempDir(), nil)
	changed, err := s.Offer(signedKeyring(t, 9, testNow.Add(time.Hour), []testKey{root}, root), testNow, 0)
	if changed || err != nil || s.Status() != nil {
		t.Fatalf("Offer = %v, %v; status %+v", changed, err, s.Status())
	}
	if ids := releaseKeyIDs(t, s); len(ids) != 1 || ids[0] != keyID(k1) {
		t.Errorf("release keys %v", ids)
	}
}

// TestTrustStoreDamagedSavedKeyring: a torn saved keyring does not keep
// the host from starting; the keyring file is used.
func TestTrustStoreDamagedSavedKeyring(t *testing.T) {
	root, k1 := newTestKey(t), newTestKey(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, savedKeyringFile), []byte(`{"keyring":{"ser`), 0o600); err != nil {
		t.Fatal(err)
	}
	file := parsedKeyring(t, signedKeyring(t, 4, testNow.Add(time.Hour), []testKey{k1}, root))
	var log strings.Builder
	s := NewTrustStore(Trust{Roots: testTrust(t, 1, root).Keys, Keyring: file}, dir, slog.New(slog.NewTextHandler(&log, nil)))
	if s.Trust().KeyringSerial() != 4 {
		t.Errorf("serial %d, want the file's 4", s.Trust().KeyringSerial())
	}
	if !strings.Contains(log.String(), "ignoring the saved release keyring") {
		t.Errorf("log %q", log.String())
	}
}

// TestUpdaterTakesRotatedKeyring: a release signed by a key the host's
// keyring does not list is refused; once a keyring listing that key is
// published, the host takes it on its periodic read and installs the
// refused release without a new desired version. A bad published keyring
// after that changes nothing.
func TestUpdaterTakesRotatedKeyring(t *testing.T) {
	w := newWorld(t)
	root := newTestKey(t)
	later := testNow.Add(24 * time.Hour)
	w.store = NewTrustStore(Trust{Roots: testTrust(t, 1, root).Keys,
		Keyring: parsedKeyring(t, signedKeyring(t, 1, later, []testKey{w.k1}, root))}, w.stateDir, nil)
	var mu sync.Mutex
	var published []byte
	reads := 0
	w.keyring = func(context.Context) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		reads++
		return published, nil
	}
	w.keyringRefresh = 50 * time.Millisecond
	u := w.updater(t)
	w.plugins.Refresh(tp)
	waitFor(t, "plugin running", func() bool { return w.plugins.status(t).State == supervisor.StateRunning })

	w.publish("1.1.0", release(t, "vigil-testplugin", "1.1.0"), nil, w.k2)
	u.Want(tp, "1.1.0")
	st := waitState(t, u, "1.1.0", api.UpdateRefused)
	if !strings.Contains(st.Error, "too few distinct trusted keys") {
		t.Errorf("refusal %q does not say the signing key is not trusted", st.Error)
	}
	t.Logf("refused with keyring serial 1: %s", st.Error)

	mu.Lock()
	published = signedKeyring(t, 2, later, []testKey{w.k2}, root)
	mu.Unlock()
	st = waitState(t, u, "1.1.0", api.UpdateInstalled)
	if st.Running != "1.1.0" || w.store.Status().Serial != 2 {
		t.Errorf("after the rotation: status %+v, keyring %+v", st, w.store.Status())
	}
	if !strings.Contains(w.logText(), "release refused before is tried again with the new keyring") {
		t.Error("the retry is not logged")
	}

	// A published keyring signed by no root: refused, reported, and the
	// host keeps serial 2 and its installed release.
	mu.Lock()
	published = signedKeyring(t, 3, later, []testKey{w.k1}, w.k1)
	before := reads
	mu.Unlock()
	waitFor(t, "the bad keyring read", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return reads > before+1
	})
	if ks := w.store.Status(); ks.Serial != 2 || ks.Refused != 3 || !strings.Contains(ks.Error, "not signed by enough root keys") {
		t.Errorf("keyring status %+v", ks)
	}
	if s := u.Status(tp); s.State != api.UpdateInstalled || s.Running != "1.1.0" {
		t.Errorf("update status %+v", s)
	}
}

// TestTrustStoreSavedKeyringNotSignedByRoots: a saved keyring that parses
// but that the pinned roots did not sign (edited, damaged) is not the
// keyring in use: the file's is, and the fleet's genuine keyring with the
// saved copy's serial is then taken.
func TestTrustStoreSavedKeyringNotSignedByRoots(t *testing.T) {
	root, stranger, k1, k2 := newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t)
	later := testNow.Add(24 * time.Hour)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, savedKeyringFile), signedKeyring(t, 5, later, []testKey{k2}, stranger), 0o600); err != nil {
		t.Fatal(err)
	}
	file := parsedKeyring(t, signedKeyring(t, 1, later, []testKey{k1}, root))
	var log strings.Builder
	s := NewTrustStore(Trust{Roots: testTrust(t, 1, root).Keys, Keyring: file}, dir, slog.New(slog.NewTextHandler(&log, nil)))
	if got := s.Trust().KeyringSerial(); got != 1 {
		t.Errorf("serial in use %d, want the file's 1 (the saved copy is not signed by the roots)", got)
	}
	if !strings.Contains(log.String(), "ignoring the saved release keyring") {
		t.Errorf("log %q", log.String())
	}
	if changed, err := s.Offer(signedKeyring(t, 5, later, []testKey{k2}, root), testNow, 0); !changed || err != nil {
		t.Fatalf("the genuine serial 5: Offer = %v, %v", changed, err)
	}
	if ids := releaseKeyIDs(t, s); len(ids) != 1 || ids[0] != keyID(k2) {
		t.Errorf("release keys %v, want k2", ids)
	}
}

// TestTrustStoreNoRollbackAfterLosingSavedKeyring: the host accepted
// serial 3 (installed.json records it), then its saved keyring was
// damaged. After a restart the keyring file's serial 1 is the fallback,
// but neither it nor an older keyring replayed through etcd (serial 2) is
// trusted, also through callers that pass no minimum (self-update); the
// genuine serial 3 is taken again.
func TestTrustStoreNoRollbackAfterLosingSavedKeyring(t *testing.T) {
	root, k1, k2, k3 := newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t)
	roots := testTrust(t, 1, root).Keys
	later := testNow.Add(24 * time.Hour)
	file := parsedKeyring(t, signedKeyring(t, 1, later, []testKey{k1}, root))
	v3 := signedKeyring(t, 3, later, []testKey{k3}, root)
	dir := t.TempDir()
	if changed, err := NewTrustStore(Trust{Roots: roots, Keyring: file}, dir, nil).Offer(v3, testNow, 0); !changed || err != nil {
		t.Fatalf("Offer(serial 3) = %v, %v", changed, err)
	}
	// What the updater records when the keyring is taken.
	if err := saveState(dir, state{Plugins: map[string]*record{}, KeyringSerial: 3}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, savedKeyringFile), []byte(`{"keyring":{"ser`), 0o600); err != nil {
		t.Fatal(err)
	}

	s := NewTrustStore(Trust{Roots: roots, Keyring: file}, dir, nil)
	if _, err := s.Release(testNow, 0); !errors.Is(err, signing.ErrKeyringRollback) {
		t.Errorf("the file's serial 1 after serial 3 was accepted: Release = %v, want %v", err, signing.ErrKeyringRollback)
	}
	v2 := signedKeyring(t, 2, later, []testKey{k2}, root)
	if changed, err := s.Offer(v2, testNow, 0); changed || !errors.Is(err, signing.ErrKeyringRollback) {
		t.Errorf("replayed serial 2: Offer = %v, %v; want %v", changed, err, signing.ErrKeyringRollback)
	}
	if changed, err := s.Offer(v3, testNow, 0); !changed || err != nil {
		t.Fatalf("serial 3 again: Offer = %v, %v", changed, err)
	}
	if ids := releaseKeyIDs(t, s); len(ids) != 1 || ids[0] != keyID(k3) {
		t.Errorf("release keys %v, want k3", ids)
	}
}

// TestUpdaterRetriesWhenKeyringTakenElsewhere: the trust store is shared
// with self-update, which reads the published keyring before each
// vigil-host update. When that read takes the new keyring, the plugin
// release refused with the old one is tried again too, and installed.json
// records the serial.
func TestUpdaterRetriesWhenKeyringTakenElsewhere(t *testing.T) {
	w := newWorld(t)
	root := newTestKey(t)
	later := testNow.Add(24 * time.Hour)
	w.store = NewTrustStore(Trust{Roots: testTrust(t, 1, root).Keys,
		Keyring: parsedKeyring(t, signedKeyring(t, 1, later, []testKey{w.k1}, root))}, w.stateDir, nil)
	var mu sync.Mutex
	var published []byte
	w.keyring = func(context.Context) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		return published, nil
	}
	w.keyringRefresh = time.Hour
	u := w.updater(t)
	w.plugins.Refresh(tp)
	waitFor(t, "plugin running", func() bool { return w.plugins.status(t).State == supervisor.StateRunning })

	w.publish("1.1.0", release(t, "vigil-testplugin", "1.1.0"), nil, w.k2)
	u.Want(tp, "1.1.0")
	waitState(t, u, "1.1.0", api.UpdateRefused)

	mu.Lock()
	published = signedKeyring(t, 2, later, []testKey{w.k2}, root)
	mu.Unlock()
	// Self-update's read (agent.fetchHostRelease).
	if !w.store.Refresh(context.Background(), w.keyring, testNow, 0) {
		t.Fatal("the published serial 2 was not taken")
	}
	if st := waitState(t, u, "1.1.0", api.UpdateInstalled); st.Running != "1.1.0" {
		t.Errorf("status %+v", st)
	}
	if st, err := loadState(w.stateDir); err != nil || st.KeyringSerial != 2 {
		t.Errorf("installed.json keyring_serial %d, %v; want 2", st.KeyringSerial, err)
	}
}

// TestUpdaterRetriesRefusalRacingNewKeyring: a new keyring is taken (by
// the periodic read or self-update) while a release is being refused
// with the old one, after the retry pass looked for refused releases and
// before the refusal is recorded. The release is still tried again.
func TestUpdaterRetriesRefusalRacingNewKeyring(t *testing.T) {
	w := newWorld(t)
	root := newTestKey(t)
	later := testNow.Add(24 * time.Hour)
	w.store = NewTrustStore(Trust{Roots: testTrust(t, 1, root).Keys,
		Keyring: parsedKeyring(t, signedKeyring(t, 1, later, []testKey{w.k1}, root))}, w.stateDir, nil)
	v2 := signedKeyring(t, 2, later, []testKey{w.k2}, root)
	var once sync.Once
	w.onLog = func(line string) {
		// The refusal is logged before it is recorded: take the new
		// keyring exactly in between.
		if strings.Contains(line, "plugin update refused") {
			once.Do(func() {
				if changed, err := w.store.Offer(v2, testNow, 0); !changed || err != nil {
					t.Errorf("Offer(serial 2) = %v, %v", changed, err)
				}
			})
		}
	}
	u := w.updater(t)
	w.plugins.Refresh(tp)
	waitFor(t, "plugin running", func() bool { return w.plugins.status(t).State == supervisor.StateRunning })

	w.publish("1.1.0", release(t, "vigil-testplugin", "1.1.0"), nil, w.k2)
	u.Want(tp, "1.1.0")
	if st := waitState(t, u, "1.1.0", api.UpdateInstalled); st.Running != "1.1.0" {
		t.Errorf("status %+v", st)
	}
}

// TestTrustStoreRechecksKeyringRefusedAsExpired: a keyring refused as
// expired by a clock running ahead is taken once the clock is right, with
// no new publish (the same bytes offered again are checked again).
func TestTrustStoreRechecksKeyringRefusedAsExpired(t *testing.T) {
	root, k1, k2 := newTestKey(t), newTestKey(t), newTestKey(t)
	roots := testTrust(t, 1, root).Keys
	later := testNow.Add(24 * time.Hour)
	file := parsedKeyring(t, signedKeyring(t, 1, later, []testKey{k1}, root))
	s := NewTrustStore(Trust{Roots: roots, Keyring: file}, t.TempDir(), nil)
	v2 := signedKeyring(t, 2, later, []testKey{k2}, root)
	ahead := later.Add(time.Hour)
	if changed, err := s.Offer(v2, ahead, 0); changed || !errors.Is(err, signing.ErrKeyringExpired) {
		t.Fatalf("Offer with the clock a day ahead = %v, %v; want refused as expired", changed, err)
	}
	if changed, err := s.Offer(v2, testNow, 0); !changed || err != nil {
		t.Fatalf("the same keyring with the clock corrected = %v, %v; want taken", changed, err)
	}
	if st := s.Status(); st.Serial != 2 || st.Error != "" {
		t.Errorf("status %+v", st)
	}
}
