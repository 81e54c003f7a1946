package rollout

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"aead.dev/minisign"
	"github.com/vigil-hids/vigil/signing"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// keyNow is the fixed clock of the keyring tests.
var keyNow = time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)

type keyPair struct {
	pub minisign.PublicKey
	sec minisign.PrivateKey
}

func newKeys(t *testing.T, n int) []keyPair {
	t.Helper()
	out := make([]keyPair, n)
	for i := range out {
		pub, sec, err := signing.GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = keyPair{pub, sec}
	}
	return out
}

func trustOf(t *testing.T, threshold int, keys ...keyPair) *signing.Trust {
	t.Helper()
	pubs := make([]minisign.PublicKey, len(keys))
	for i, k := range keys {
		pubs[i] = k.pub
	}
	tr, err := signing.NewTrust(threshold, pubs...)
	if err != nil {
		t.Fatal(err)
	}
	return &tr
}

// keyringOf is a keyring of serial listing release keys, valid for a day,
// signed by each root, as vigil-sign keyring create and sign write it.
func keyringOf(t *testing.T, serial uint64, release []keyPair, roots ...keyPair) (signing.SignedKeyring, []byte) {
	t.Helper()
	kr := signing.SignedKeyring{Keyring: signing.Keyring{Serial: serial, Expires: keyNow.Add(24 * time.Hour), Threshold: 1},
		Signatures: []signing.Signature{}}
	for _, k := range release {
		kr.Keyring.Keys = append(kr.Keyring.Keys, k.pub.String())
	}
	return kr, signKeyring(t, &kr, roots...)
}

func signKeyring(t *testing.T, kr *signing.SignedKeyring, roots ...keyPair) []byte {
	t.Helper()
	for _, r := range roots {
		if err := kr.Sign(r.sec); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := kr.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func (e *env) keyrings(roots *signing.Trust) *Keyrings {
	return NewKeyrings(KeyringOptions{Store: e.st, Roots: roots, Now: func() time.Time { return keyNow }})
}

// stored returns the value of Keyspace.Keyring() ("" if none) and the
// number of keys under the keyring prefix.
func (e *env) stored(t *testing.T) (string, int64) {
	t.Helper()
	resp, err := e.cli.Get(ctx(t), e.ks.Keyring())
	if err != nil {
		t.Fatal(err)
	}
	all, err := e.cli.Get(ctx(t), e.ks.Prefix+"/keyring/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return "", all.Count
	}
	return string(resp.Kvs[0].Value), all.Count
}

func TestPublishKeyringSerialOnlyGrows(t *testing.T) {
	e := newEnv(t, false)
	c := ctx(t)
	roots, rel := newKeys(t, 2), newKeys(t, 3)
	k := e.keyrings(trustOf(t, 1, roots...))

	if _, err := k.Keyring(c); !errors.Is(err, ErrNoKeyring) || !strings.Contains(err.Error(), "vigilctl keyring publish") {
		t.Fatalf("Keyring before any publish: %v", err)
	}
	kr1, raw1 := keyringOf(t, 1, rel[:2], roots[0])
	info, err := k.PublishKeyring(c, raw1, "alice")
	if err != nil {
		t.Fatal(err)
	}
	wantIDs := []string{signing.KeyID(rel[0].pub.ID()), signing.KeyID(rel[1].pub.ID())}
	if info.Result != "created" || info.Serial != 1 || info.Threshold != 1 || fmt.Sprint(info.KeyIDs) != fmt.Sprint(wantIDs) ||
		fmt.Sprint(info.RootSigners) != fmt.Sprint([]string{signing.KeyID(roots[0].pub.ID())}) || info.PublishedBy != "alice" ||
		!info.PublishedAt.Equal(keyNow) || info.Revision == 0 || !sameJSON(info.Signed, raw1) {
		t.Fatalf("first publish: %+v", info)
	}
	if got, _ := e.stored(t); got != string(raw1) {
		t.Fatalf("etcd holds %q, want the upload byte for byte", got)
	}
	shown, err := k.Keyring(c)
	if err != nil || shown.Revision != info.Revision || shown.PublishedBy != "alice" || !sameJSON(shown.Signed, raw1) ||
		!shown.Expires.Equal(kr1.Keyring.Expires) {
		t.Fatalf("Keyring = %+v, %v", shown, err)
	}

	// The same bytes again: nothing written.
	again, err := k.PublishKeyring(c, raw1, "bob")
	if err != nil || again.Result != "unchanged" || again.Revision != info.Revision || again.PublishedBy != "alice" {
		t.Fatalf("same bytes: %+v, %v", again, err)
	}

	// The same keyring signed by the second root too: it replaces the
	// first, and the record keeps its publisher.
	raw1b := signKeyring(t, &kr1, roots[1])
	upd, err := k.PublishKeyring(c, raw1b, "bob")
	if err != nil || upd.Result != "updated" || upd.Revision <= info.Revision || len(upd.RootSigners) != 2 ||
		upd.PublishedBy != "alice" || upd.UpdatedBy != "bob" {
		t.Fatalf("more signatures: %+v, %v", upd, err)
	}
	if got, _ := e.stored(t); got != string(raw1b) {
		t.Fatal("the keyring with more signatures is not stored")
	}

	// Fewer signatures than published, another keyring under serial 1.
	_, rawFewer := keyringOf(t, 1, rel[:2], roots[0])
	krOther, _ := keyringOf(t, 1, rel[1:], roots[0])
	rawOther := signKeyring(t, &krOther, roots[1])
	for name, raw := range map[string][]byte{"fewer signatures": rawFewer, "other content": rawOther} {
		_, err := k.PublishKeyring(c, raw, "mallory")
		if !errors.Is(err, ErrKeyringSerial) || !strings.Contains(err.Error(), "serial 1") {
			t.Fatalf("%s under serial 1: %v", name, err)
		}
		if got, _ := e.stored(t); got != string(raw1b) {
			t.Fatalf("%s changed the stored keyring", name)
		}
	}

	// Serial 2 revokes rel[0]; then serial 1 is refused, naming both.
	_, raw2 := keyringOf(t, 2, rel[1:], roots[0])
	info2, err := k.PublishKeyring(c, raw2, "carol")
	if err != nil || info2.Result != "created" || info2.Serial != 2 || info2.PublishedBy != "carol" {
		t.Fatalf("serial 2: %+v, %v", info2, err)
	}
	_, err = k.PublishKeyring(c, raw1b, "mallory")
	if !errors.Is(err, ErrKeyringSerial) || !strings.Contains(err.Error(), "serial 1 is lower than serial 2") {
		t.Fatalf("lower serial: %v", err)
	}
	if got, _ := e.stored(t); got != string(raw2) {
		t.Fatal("a refused lower serial changed the stored keyring")
	}

	hist, err := k.KeyringHistory(c)
	if err != nil || len(hist) != 2 {
		t.Fatalf("history: %+v, %v", hist, err)
	}
	if hist[0].Serial != 1 || hist[0].PublishedBy != "alice" || hist[0].UpdatedBy != "bob" || !sameJSON(hist[0].Signed, raw1b) ||
		hist[1].Serial != 2 || hist[1].PublishedBy != "carol" || !sameJSON(hist[1].Signed, raw2) {
		t.Fatalf("history: %+v", hist)
	}

	// Someone deletes the current key around the server: history still
	// keeps the serial from going back.
	if _, err := e.cli.Delete(c, e.ks.Keyring()); err != nil {
		t.Fatal(err)
	}
	if _, err := k.PublishKeyring(c, raw1b, "mallory"); !errors.Is(err, ErrKeyringSerial) || !strings.Contains(err.Error(), "recorded in history") {
		t.Fatalf("lower serial than history: %v", err)
	}
	if re, err := k.PublishKeyring(c, raw2, "carol"); err != nil || re.Result != "created" || re.PublishedBy != "carol" {
		t.Fatalf("republishing serial 2 after a delete: %+v, %v", re, err)
	}
}

func TestPublishKeyringRefusesBadInput(t *testing.T) {
	e := newEnv(t, false)
	roots, rel := newKeys(t, 3), newKeys(t, 1)
	kr, signed := keyringOf(t, 1, rel, roots[0])
	var fields map[string]any
	if err := json.Unmarshal(signed, &fields); err != nil {
		t.Fatal(err)
	}
	fields["comment"] = "x"
	unknown, _ := json.Marshal(fields)
	expired := kr
	expired.Keyring.Expires = keyNow
	expired.Signatures = []signing.Signature{}
	rawExpired := signKeyring(t, &expired, roots[0])
	_, unsigned := keyringOf(t, 1, rel)
	_, byStranger := keyringOf(t, 1, rel, newKeys(t, 1)[0])
	tampered := bytes.Replace(signed, []byte(`"serial":1`), []byte(`"serial":9`), 1)
	if bytes.Equal(tampered, signed) {
		t.Fatal("the tampered keyring is the signed one")
	}

	tests := []struct {
		name  string
		raw   []byte
		roots *signing.Trust
		want  error
		text  string
	}{
		{name: "malformed json", raw: []byte(`{"keyring":`), want: signing.ErrMalformed},
		{name: "unknown field", raw: unknown, want: signing.ErrMalformed, text: "comment"},
		{name: "trailing data", raw: append(append([]byte{}, signed...), "{}"...), want: signing.ErrMalformed},
		{name: "no keys", raw: []byte(`{"keyring":{"serial":1,"expires":"2027-01-01T00:00:00Z","threshold":1,"keys":[]},"signatures":[]}`),
			want: signing.ErrMalformed},
		{name: "expired", raw: rawExpired, want: ErrKeyringInvalid, text: "expired 2026-11-26T08:00:00Z"},
		{name: "unsigned with roots", raw: unsigned, roots: trustOf(t, 1, roots...), want: signing.ErrKeyringUnsigned},
		{name: "unknown root with roots", raw: byStranger, roots: trustOf(t, 1, roots...), want: signing.ErrKeyringUnsigned},
		{name: "under threshold", raw: signed, roots: trustOf(t, 2, roots...), want: signing.ErrKeyringUnsigned},
		{name: "tampered", raw: tampered, roots: trustOf(t, 1, roots...), want: signing.ErrBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.keyrings(tt.roots).PublishKeyring(ctx(t), tt.raw, "alice")
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.text) {
				t.Fatalf("got %v, want %v containing %q", err, tt.want, tt.text)
			}
			if got, n := e.stored(t); got != "" || n != 0 {
				t.Fatalf("a refused keyring wrote %d keys", n)
			}
		})
	}
	// Without roots the server cannot judge signatures: hosts do.
	if info, err := e.keyrings(nil).PublishKeyring(ctx(t), unsigned, "alice"); err != nil || info.Result != "created" {
		t.Fatalf("unsigned without roots: %+v, %v", info, err)
	}
}

// TestPublishKeyringConcurrent publishes different keyrings under one
// serial at once: exactly one wins, the others are refused, and the
// stored keyring and its record agree.
func TestPublishKeyringConcurrent(t *testing.T) {
	e := newEnv(t, false)
	roots := newKeys(t, 1)
	k := e.keyrings(nil)
	const n = 8
	raws := make([][]byte, n)
	for i := range raws {
		_, raws[i] = keyringOf(t, 1, newKeys(t, 1), roots[0])
	}
	c := ctx(t)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range raws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = k.PublishKeyring(c, raws[i], fmt.Sprintf("op-%d", i))
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner < 0:
			winner = i
		case err == nil:
			t.Fatalf("two publishes of serial 1 won: %d and %d", winner, i)
		case !errors.Is(err, ErrKeyringSerial):
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no publish won")
	}
	if got, _ := e.stored(t); got != string(raws[winner]) {
		t.Fatal("the stored keyring is not the winner's")
	}
	hist, err := k.KeyringHistory(ctx(t))
	if err != nil || len(hist) != 1 || hist[0].PublishedBy != fmt.Sprintf("op-%d", winner) || !sameJSON(hist[0].Signed, raws[winner]) {
		t.Fatalf("history %+v, %v; winner op-%d", hist, err, winner)
	}
}

// sameJSON compares the JSON values a and b: a record embeds the upload
// as a JSON value, which encoding/json writes compacted (etcd's Keyring
// key holds the upload byte for byte).
func sameJSON(a, b []byte) bool {
	var x, y bytes.Buffer
	return json.Compact(&x, a) == nil && json.Compact(&y, b) == nil && bytes.Equal(x.Bytes(), y.Bytes())
}

// TestPublishKeyringHistoryKeepsTheSerial: the published key holds an older
// keyring again (written around the server: an etcd restored from an old
// backup, or a replay by whoever can write etcd). The serials recorded in
// history still only grow: a serial recorded with another keyring, or a
// lower one, is refused, and the history record stays as it was.
func TestPublishKeyringHistoryKeepsTheSerial(t *testing.T) {
	e := newEnv(t, false)
	c := ctx(t)
	roots, rel := newKeys(t, 2), newKeys(t, 3)
	k := e.keyrings(nil)
	kr1, raw1 := keyringOf(t, 1, rel[:2], roots[0])
	_, raw2 := keyringOf(t, 2, rel[1:], roots[0])
	for _, raw := range [][]byte{raw1, raw2} {
		if _, err := k.PublishKeyring(c, raw, "carol"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.cli.Put(c, e.ks.Keyring(), string(raw1)); err != nil {
		t.Fatal(err)
	}
	_, other2 := keyringOf(t, 2, rel[:1], roots[0])
	raw1b := signKeyring(t, &kr1, roots[1])
	for _, tt := range []struct {
		name string
		raw  []byte
	}{{"serial 2 with another keyring", other2}, {"serial 1 with more signatures", raw1b}, {"serial 1 as published", raw1}} {
		_, err := k.PublishKeyring(c, tt.raw, "mallory")
		if !errors.Is(err, ErrKeyringSerial) || !strings.Contains(err.Error(), "recorded in history") {
			t.Errorf("%s: %v", tt.name, err)
		}
		if got, _ := e.stored(t); got != string(raw1) {
			t.Fatalf("%s changed the published keyring", tt.name)
		}
	}
	hist, err := k.KeyringHistory(c)
	if err != nil || len(hist) != 2 || !sameJSON(hist[1].Signed, raw2) || hist[1].PublishedBy != "carol" || hist[1].UpdatedBy != "" {
		t.Fatalf("history after the refusals: %+v, %v", hist, err)
	}
	// The keyring history records is published again; the next serial is
	// published as usual.
	if info, err := k.PublishKeyring(c, raw2, "dave"); err != nil || info.Serial != 2 || info.PublishedBy != "carol" {
		t.Fatalf("serial 2 again: %+v, %v", info, err)
	}
	_, raw3 := keyringOf(t, 3, rel, roots[0])
	if info, err := k.PublishKeyring(c, raw3, "dave"); err != nil || info.Result != "created" {
		t.Fatalf("serial 3: %+v, %v", info, err)
	}
}

// TestKeyringHistoryDamagedRecord: a history record that cannot be
// decoded (written around the server) does not hide the others: every
// record that decodes is listed, the damaged ones as entries with their
// key, the serial the key names and the decode error.
func TestKeyringHistoryDamagedRecord(t *testing.T) {
	e := newEnv(t, false)
	c := ctx(t)
	roots, rel := newKeys(t, 1), newKeys(t, 1)
	k := e.keyrings(nil)
	var raws [][]byte
	for serial := uint64(1); serial <= 3; serial++ {
		_, raw := keyringOf(t, serial, rel, roots[0])
		if _, err := k.PublishKeyring(c, raw, "carol"); err != nil {
			t.Fatal(err)
		}
		raws = append(raws, raw)
	}
	junk := e.ks.KeyringHistory() + "junk"
	for key, val := range map[string]string{e.ks.KeyringRecordKey(2): "garbage{", junk: `{"serial":"x"}`} {
		if _, err := e.cli.Put(c, key, val); err != nil {
			t.Fatal(err)
		}
	}
	hist, err := k.KeyringHistory(c)
	if err != nil {
		t.Fatalf("one damaged record hid the history: %v", err)
	}
	if len(hist) != 4 {
		t.Fatalf("want 4 entries (3 serials and the junk key), got %+v", hist)
	}
	// By serial: the junk key names none (0).
	if h := hist[0]; h.Serial != 0 || h.Key != junk || !strings.Contains(h.Error, "unreadable record") || h.PublishedBy != "" {
		t.Fatalf("junk entry: %+v", h)
	}
	for i, serial := range []uint64{1, 3} {
		h := hist[2*i+1]
		if h.Serial != serial || h.Error != "" || h.Key != "" || h.PublishedBy != "carol" || !sameJSON(h.Signed, raws[serial-1]) {
			t.Fatalf("serial %d: %+v", serial, h)
		}
	}
	if h := hist[2]; h.Serial != 2 || h.Key != e.ks.KeyringRecordKey(2) || !strings.Contains(h.Error, "invalid character") || h.Signed != nil {
		t.Fatalf("damaged serial 2: %+v", h)
	}
	// The damaged record is listed, not repaired or removed.
	if resp, err := e.cli.Get(c, e.ks.KeyringRecordKey(2)); err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "garbage{" {
		t.Fatalf("record 2 changed: %v, %v", resp, err)
	}
}
