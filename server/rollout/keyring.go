package rollout

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/store"
	"github.com/vigil-hids/vigil/signing"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Keyring refusals, compared with errors.Is.
var (
	// ErrKeyringSerial: the upload's serial does not grow past the
	// published one (lower, or equal with other content). Hosts refuse a
	// lower serial anyway; the server refuses it first so the mirror
	// never goes back.
	ErrKeyringSerial = errors.New("rollout: keyring serial refused, a published keyring is only replaced by a higher serial")
	// ErrKeyringInvalid: the upload is expired, or (with root keys) not
	// signed by enough of them.
	ErrKeyringInvalid = errors.New("rollout: keyring refused")
	// ErrNoKeyring: no keyring is published.
	ErrNoKeyring = errors.New("rollout: no keyring published")
)

// KeyringOptions configures Keyrings.
type KeyringOptions struct {
	Store *store.Store
	// Roots, if set, are the root keys (a trust file) uploads are checked
	// against as a courtesy; hosts verify against their own pinned roots.
	Roots *signing.Trust
	// Now is the clock of the expiry check; nil means time.Now.
	Now func() time.Time
}

// Keyrings publishes the root-signed release keyring to etcd: the
// keyring.json byte for byte at Keyspace.Keyring(), and a record per
// serial under Keyspace.KeyringHistory(), both in one transaction. The
// server is a mirror: the root signatures are the trust, and hosts verify
// them before taking a keyring.
type Keyrings struct {
	cli   *clientv3.Client
	ks    api.Keyspace
	roots *signing.Trust
	now   func() time.Time
}

// NewKeyrings returns Keyrings over opts.Store's etcd.
func NewKeyrings(opts KeyringOptions) *Keyrings {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Keyrings{cli: opts.Store.Client(), ks: opts.Store.Keyspace(), roots: opts.Roots, now: opts.Now}
}

// Check parses raw strictly and refuses an expired keyring, or, with root
// keys, one they do not sign; it touches nothing.
func (k *Keyrings) Check(raw []byte) (signing.SignedKeyring, error) {
	s, err := signing.ParseKeyring(bytes.NewReader(raw))
	if err != nil {
		return s, err
	}
	now := k.now()
	if !now.Before(s.Keyring.Expires) {
		return s, fmt.Errorf("%w: keyring serial %d expired %s (now %s); hosts refuse an expired keyring, sign a new one",
			ErrKeyringInvalid, s.Keyring.Serial, s.Keyring.Expires.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if k.roots != nil {
		if _, err := signing.VerifyKeyring(s, *k.roots, now, 0); err != nil {
			return s, fmt.Errorf("%w: the server's root keys (--release-roots) refuse it (a courtesy check; hosts verify on their own): %w",
				ErrKeyringInvalid, err)
		}
	}
	return s, nil
}

// PublishKeyring writes raw, a signed keyring.json, as the published
// keyring, with a record naming author. The same bytes again change
// nothing ("unchanged"); the same keyring with every published root
// signature and more replaces it ("updated"); a lower serial, or the same
// serial with another keyring, is ErrKeyringSerial; a higher serial
// replaces it ("created").
func (k *Keyrings) PublishKeyring(ctx context.Context, raw []byte, author string) (api.KeyringInfo, error) {
	sk, err := k.Check(raw)
	if err != nil {
		return api.KeyringInfo{}, err
	}
	serial := sk.Keyring.Serial
	cur, recKey := k.ks.Keyring(), k.ks.KeyringRecordKey(serial)
	for attempt := 0; attempt < 5; attempt++ {
		resp, err := k.cli.Txn(ctx).Then(
			clientv3.OpGet(cur),
			clientv3.OpGet(recKey),
			clientv3.OpGet(k.ks.KeyringHistory(), clientv3.WithLastKey()...), // the highest serial recorded
		).Commit()
		if err != nil {
			return api.KeyringInfo{}, fmt.Errorf("reading %s: %w", cur, err)
		}
		curKV := first(resp.Responses[0].GetResponseRange().GetKvs())
		recKV := first(resp.Responses[1].GetResponseRange().GetKvs())
		lastKV := first(resp.Responses[2].GetResponseRange().GetKvs())
		var curRev, recRev int64
		if curKV != nil {
			curRev = curKV.ModRevision
		}
		if recKV != nil {
			recRev = recKV.ModRevision
		}
		rec := api.KeyringRecord{Serial: serial, PublishedBy: author, PublishedAt: k.now().UTC(), Signed: raw}
		if recKV != nil {
			var old api.KeyringRecord
			if json.Unmarshal(recKV.Value, &old) == nil && old.PublishedBy != "" {
				rec.PublishedBy, rec.PublishedAt = old.PublishedBy, old.PublishedAt
				rec.UpdatedBy, rec.UpdatedAt = author, k.now().UTC()
			}
		}
		result := "created"
		for _, prev := range k.previous(curKV, lastKV) {
			if err := compareKeyring(prev.kr, sk, prev.where); err != nil {
				return api.KeyringInfo{}, err
			}
			if prev.kr.Keyring.Serial == serial && curKV != nil {
				result = "updated"
			}
		}
		if curKV != nil && bytes.Equal(curKV.Value, raw) {
			info, err := k.info(ctx, curKV)
			info.Result = "unchanged"
			return info, err
		}
		recJSON, err := json.Marshal(rec)
		if err != nil {
			return api.KeyringInfo{}, fmt.Errorf("encoding %s: %w", recKey, err)
		}
		tx, err := k.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(cur), "=", curRev),
				clientv3.Compare(clientv3.ModRevision(recKey), "=", recRev)).
			Then(clientv3.OpPut(cur, string(raw)), clientv3.OpPut(recKey, string(recJSON))).
			Commit()
		if err != nil {
			return api.KeyringInfo{}, fmt.Errorf("writing %s: %w", cur, err)
		}
		if tx.Succeeded {
			info := infoOf(sk, raw, tx.Header.Revision, rec)
			info.Result = result
			return info, nil
		}
	}
	return api.KeyringInfo{}, fmt.Errorf("%w: %s kept changing while publishing; retry", store.ErrConflict, cur)
}

// grownFrom is a keyring a new one must grow from; where names it in
// refusals.
type grownFrom struct {
	kr    signing.SignedKeyring
	where string
}

// previous are the keyrings a new one must grow from: the published one,
// and the newest one recorded in history, which keeps the serial from going
// back when the published key is missing, unreadable or holds an older
// keyring again (written around the server).
func (k *Keyrings) previous(cur, last *mvccpb.KeyValue) []grownFrom {
	var out []grownFrom
	if cur != nil {
		if s, err := signing.ParseKeyring(bytes.NewReader(cur.Value)); err == nil {
			out = append(out, grownFrom{s, "published"})
		}
	}
	if last != nil {
		var rec api.KeyringRecord
		if json.Unmarshal(last.Value, &rec) == nil {
			if s, err := signing.ParseKeyring(bytes.NewReader(rec.Signed)); err == nil {
				out = append(out, grownFrom{s, "recorded in history"})
			}
		}
	}
	return out
}

// compareKeyring decides whether s may replace prev: a higher serial, or
// the same keyring with every signature prev has (and more).
func compareKeyring(prev, s signing.SignedKeyring, where string) error {
	old, serial := prev.Keyring.Serial, s.Keyring.Serial
	switch {
	case serial > old:
		return nil
	case serial < old:
		return fmt.Errorf("%w: keyring serial %d is lower than serial %d %s; hosts refuse a lower serial, publish serial %d or higher",
			ErrKeyringSerial, serial, old, where, old+1)
	}
	a, err1 := prev.Keyring.Body()
	b, err2 := s.Keyring.Body()
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		return fmt.Errorf("%w: keyring serial %d is already %s with other content (serial %d); a serial names one keyring forever, publish serial %d",
			ErrKeyringSerial, serial, where, old, old+1)
	}
	have := map[string]bool{}
	for _, sig := range s.Signatures {
		have[sig.KeyID] = true
	}
	var missing []string
	for _, sig := range prev.Signatures {
		if !have[sig.KeyID] {
			missing = append(missing, sig.KeyID)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: keyring serial %d is %s with root signatures by %v that the upload (serial %d) lacks; signatures are only ever added",
			ErrKeyringSerial, old, where, missing, serial)
	}
	return nil
}

// Keyring returns the published keyring with its record.
func (k *Keyrings) Keyring(ctx context.Context) (api.KeyringInfo, error) {
	key := k.ks.Keyring()
	resp, err := k.cli.Get(ctx, key)
	if err != nil {
		return api.KeyringInfo{}, fmt.Errorf("reading %s: %w", key, err)
	}
	kv := first(resp.Kvs)
	if kv == nil {
		return api.KeyringInfo{}, fmt.Errorf("%w: %s is empty (vigilctl keyring publish KEYRING_FILE)", ErrNoKeyring, key)
	}
	return k.info(ctx, kv)
}

// info describes the published keyring kv, with its serial's record.
func (k *Keyrings) info(ctx context.Context, kv *mvccpb.KeyValue) (api.KeyringInfo, error) {
	s, err := signing.ParseKeyring(bytes.NewReader(kv.Value))
	if err != nil {
		return api.KeyringInfo{}, fmt.Errorf("%s holds an unreadable keyring (written around the server?); publish a new serial to replace it: %w",
			kv.Key, err)
	}
	var rec api.KeyringRecord
	recKey := k.ks.KeyringRecordKey(s.Keyring.Serial)
	resp, err := k.cli.Get(ctx, recKey)
	if err != nil {
		return api.KeyringInfo{}, fmt.Errorf("reading %s: %w", recKey, err)
	}
	if r := first(resp.Kvs); r != nil {
		_ = json.Unmarshal(r.Value, &rec) // an unreadable record leaves the author empty
	}
	return infoOf(s, kv.Value, kv.ModRevision, rec), nil
}

func infoOf(s signing.SignedKeyring, raw []byte, rev int64, rec api.KeyringRecord) api.KeyringInfo {
	kr := s.Keyring
	info := api.KeyringInfo{Serial: kr.Serial, Expires: kr.Expires, Threshold: kr.Threshold, KeyIDs: []string{},
		RootSigners: []string{}, Revision: rev, PublishedBy: rec.PublishedBy, PublishedAt: rec.PublishedAt,
		UpdatedBy: rec.UpdatedBy, UpdatedAt: rec.UpdatedAt, Signed: json.RawMessage(raw)}
	for _, line := range kr.Keys {
		if pub, err := signing.ParsePublicKey([]byte(line)); err == nil { // ParseKeyring checked them
			info.KeyIDs = append(info.KeyIDs, signing.KeyID(pub.ID()))
		}
	}
	for _, sig := range s.Signatures {
		info.RootSigners = append(info.RootSigners, sig.KeyID)
	}
	return info
}

// KeyringHistory lists the records of every published serial, by serial.
// A record that cannot be decoded (damaged, or written around the server)
// does not hide the others: it is listed as an entry with its key, the
// serial its key names (0 if none) and the decode error.
func (k *Keyrings) KeyringHistory(ctx context.Context) ([]api.KeyringRecord, error) {
	prefix := k.ks.KeyringHistory()
	resp, err := k.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", prefix, err)
	}
	out := make([]api.KeyringRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var rec api.KeyringRecord
		err := json.Unmarshal(kv.Value, &rec)
		rec.Key, rec.Error = "", "" // listing fields, never stored
		if err != nil {
			rec = api.KeyringRecord{Key: string(kv.Key), Error: fmt.Sprintf("unreadable record: %v", err)}
			rec.Serial, _ = strconv.ParseUint(strings.TrimPrefix(string(kv.Key), prefix), 10, 64)
		}
		out = append(out, rec)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Serial < out[j].Serial })
	return out, nil
}

func first(kvs []*mvccpb.KeyValue) *mvccpb.KeyValue {
	if len(kvs) == 0 {
		return nil
	}
	return kvs[0]
}
