package update

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/atomicfile"
	"github.com/vigil-hids/vigil/signing"
)

// savedKeyringFile is the newest keyring the host accepted, under its state
// dir: a restart starts from it, not from an older keyring file.
const savedKeyringFile = "keyring.json"

// TrustStore is the trust a host verifies releases with, and moves it
// forward: with pinned root keys, a newer keyring published for the fleet
// (/hids/keyring/current) replaces the one in use once a threshold of the
// roots signed it, it has not expired, and its serial is higher. etcd is
// only the keyring's mirror: a keyring that fails any check is refused and
// reported, and the one in use stays. With pinned release keys a published
// keyring is ignored. Safe for concurrent use.
type TrustStore struct {
	dir string
	log *slog.Logger

	mu     sync.Mutex
	t      Trust
	status *api.KeyringStatus
	// floor is the highest keyring serial the host ever accepted: the
	// updater's record (installed.json) and every keyring taken since, so
	// a lost saved keyring or a caller that passes no minimum cannot bring
	// back an older keyring.
	floor uint64
	// offered is the published keyring last checked, so an unchanged one
	// is not verified and logged again at every install.
	offered []byte
	err     error
	// onChange are called, outside mu, after a keyring is taken.
	onChange []func()
}

// NewTrustStore starts from t; with root keys it takes the keyring saved
// under stateDir instead when that one's serial is higher (a damaged saved
// keyring is logged and ignored: the file's keyring is used).
func NewTrustStore(t Trust, stateDir string, log *slog.Logger) *TrustStore {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &TrustStore{dir: stateDir, log: log.With("component", "keyring"), t: t}
	if t.Roots == nil || t.Keyring == nil {
		return s
	}
	if st, err := s.loadRecord(); err == nil {
		s.floor = st.KeyringSerial
	} // a torn record is logged by the updater, which reads it too
	if saved, err := s.loadSaved(); err != nil {
		s.log.Error("ignoring the saved release keyring; using the keyring file", "err", err)
	} else if saved != nil && saved.Keyring.Serial > t.Keyring.Keyring.Serial {
		s.t.Keyring = saved
		s.log.Info("release keyring taken from the state dir", "serial", saved.Keyring.Serial,
			"file_serial", t.Keyring.Keyring.Serial)
	}
	s.status = &api.KeyringStatus{Serial: s.t.Keyring.Keyring.Serial, Expires: s.t.Keyring.Keyring.Expires}
	return s
}

func (s *TrustStore) loadRecord() (state, error) {
	if s.dir == "" {
		return state{}, nil
	}
	return loadState(s.dir)
}

func (s *TrustStore) loadSaved() (*signing.SignedKeyring, error) {
	if s.dir == "" {
		return nil, nil
	}
	path := filepath.Join(s.dir, savedKeyringFile)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	kr, err := signing.ParseKeyring(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// Only the roots' signatures make it the keyring in use: an edited or
	// damaged copy with a high serial would otherwise block the genuine
	// keyring of that serial. Expiry is checked at each use (Release), so
	// an expired copy still keeps older keyrings out.
	if _, err := signing.VerifyKeyring(kr, *s.t.Roots, kr.Keyring.Expires.Add(-time.Nanosecond), 0); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &kr, nil
}

// Trust is the trust in force now.
func (s *TrustStore) Trust() Trust {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.t
}

// Release returns the release keys in force at now (Trust.Release).
func (s *TrustStore) Release(now time.Time, minSerial uint64) (signing.Trust, error) {
	s.mu.Lock()
	t, floor := s.t, s.floor
	s.mu.Unlock()
	return t.Release(now, max(minSerial, floor, t.KeyringSerial()))
}

// Status is the keyring state for the registration, nil with pinned
// release keys. The pointer stays the same until the state changes (the
// control loop compares registrations by pointer); do not modify it.
func (s *TrustStore) Status() *api.KeyringStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Offer checks raw, the keyring published for the fleet (nil when none is
// published), and takes it when it is newer and valid: verified against the
// pinned roots at now, with a serial above the one in use, not below
// minSerial nor the highest the host ever accepted (installed.json and the
// keyrings taken since, whatever minSerial says). It reports whether the
// keyring in use changed; an error says why raw was refused, and the
// keyring in use stays. The same bytes offered again give the same answer
// without a second check, but for one refused as expired, which is
// checked again (against the clock of the next offer).
func (s *TrustStore) Offer(raw []byte, now time.Time, minSerial uint64) (bool, error) {
	changed, hooks, err := s.offer(raw, now, minSerial)
	if changed {
		for _, f := range hooks {
			f()
		}
	}
	return changed, err
}

// OnChange registers f to be called after each keyring taken (from the
// goroutine that offered it).
func (s *TrustStore) OnChange(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onChange = append(s.onChange, f)
}

func (s *TrustStore) offer(raw []byte, now time.Time, minSerial uint64) (bool, []func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	hooks := slices.Clone(s.onChange)
	if s.t.Roots == nil || s.t.Keyring == nil || raw == nil {
		return false, nil, nil
	}
	if bytes.Equal(raw, s.offered) {
		return false, nil, s.err
	}
	s.offered = bytes.Clone(raw)
	changed, err := s.take(raw, now, minSerial)
	s.err = err
	if errors.Is(err, signing.ErrKeyringExpired) {
		// Judged by this host's clock, which may be the one that is
		// wrong (ahead): checked again at the next offer, so a corrected
		// clock takes it without a new publish.
		s.offered = nil
	}
	if err != nil {
		var serial uint64
		if kr, perr := signing.ParseKeyring(bytes.NewReader(raw)); perr == nil {
			serial = kr.Keyring.Serial
		}
		s.status = &api.KeyringStatus{Serial: s.status.Serial, Expires: s.status.Expires, Refused: serial, Error: err.Error()}
		s.log.Error("published release keyring refused; keeping the one in use", "in_use", s.status.Serial, "err", err)
	}
	return changed, hooks, err
}

// take checks raw and, if it is newer and valid, makes it the keyring in
// use and saves it. Called with s.mu held.
func (s *TrustStore) take(raw []byte, now time.Time, minSerial uint64) (bool, error) {
	kr, err := signing.ParseKeyring(bytes.NewReader(raw))
	if err != nil {
		return false, fmt.Errorf("published release keyring: %w", err)
	}
	cur := s.t.Keyring.Keyring.Serial
	switch serial := kr.Keyring.Serial; {
	case serial < cur:
		return false, fmt.Errorf("published release keyring serial %d refused: %w: serial %d is in use", serial, signing.ErrKeyringRollback, cur)
	case serial == cur:
		// The keyring in use (maybe with other root signatures): nothing
		// to take, and nothing wrong.
		s.status = &api.KeyringStatus{Serial: cur, Expires: s.t.Keyring.Keyring.Expires}
		return false, nil
	}
	if _, err := signing.VerifyKeyring(kr, *s.t.Roots, now, max(minSerial, s.floor, cur)); err != nil {
		return false, fmt.Errorf("published release %w", err)
	}
	if s.dir != "" {
		if err := atomicfile.Write(filepath.Join(s.dir, savedKeyringFile), raw, 0o600); err != nil {
			// Taken anyway: it verified. Without the saved copy a
			// restart starts from the keyring file and takes this one
			// again at the next install.
			s.log.Error("saving the release keyring", "serial", kr.Keyring.Serial, "err", err)
		}
	}
	s.log.Info("release keyring taken", "serial", kr.Keyring.Serial, "previous", cur,
		"expires", kr.Keyring.Expires, "threshold", kr.Keyring.Threshold, "keys", len(kr.Keyring.Keys))
	s.t.Keyring = &kr
	s.floor = max(s.floor, kr.Keyring.Serial)
	s.status = &api.KeyringStatus{Serial: kr.Keyring.Serial, Expires: kr.Keyring.Expires}
	return true, nil
}

// Refresh reads the published keyring with read and offers it, and
// reports whether the keyring in use changed. A failed read is logged and
// leaves the keyring in use (the next install or refresh reads again).
func (s *TrustStore) Refresh(ctx context.Context, read func(context.Context) ([]byte, error), now time.Time, minSerial uint64) bool {
	if read == nil {
		return false
	}
	if t := s.Trust(); t.Roots == nil {
		return false
	}
	raw, err := read(ctx)
	if err != nil {
		s.log.Warn("reading the published release keyring; keeping the one in use", "err", err)
		return false
	}
	changed, _ := s.Offer(raw, now, minSerial)
	return changed
}
