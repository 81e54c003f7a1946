// Package vulnstore is the server's side of fleet vulnerability search:
// it takes the hosts' inventory digests and, for digests it has not seen,
// their full inventories; it stores each inventory once per digest and
// each host's digest in an embedded bbolt database under the server's
// data dir (never in etcd: inventories are large), feeds them to the
// in-memory index (vuln/index), and imports the OSV advisories the
// server was started with. At start the index is rebuilt from the
// database; hosts whose registration has been gone longer than
// OfflineAfter are dropped by Prune.
//
// Each server replica keeps its own store: a replica knows the hosts that
// reported to it (see docs/vulnscan.md).
package vulnstore

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/vigil-hids/vigil/vuln/index"
	"github.com/vigil-hids/vigil/vuln/ingest"
	"github.com/vigil-hids/vigil/vuln/inventory"
	"github.com/vigil-hids/vigil/vuln/osv"
)

// DefaultOfflineAfter is how long a host may be unregistered before its
// inventory mapping is dropped.
const DefaultOfflineAfter = 24 * time.Hour

var (
	bucketInv   = []byte("inventories")
	bucketHosts = []byte("hosts")
)

// Config configures a Service. Zero values mean the defaults.
type Config struct {
	// Dir holds vuln.db. Required.
	Dir string
	// OSV are advisory files, zips or directories imported at Open and
	// on Reload.
	OSV []string
	// MaxInventory bounds an upload after decompression.
	MaxInventory int64
	// OfflineAfter is how long a host's registration may be missing
	// before Prune drops the host.
	OfflineAfter time.Duration
	Logger       *slog.Logger
	Now          func() time.Time
}

// Validate checks c without side effects.
func (c Config) Validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("vuln dir must be set"))
	}
	if c.OfflineAfter != 0 && (c.OfflineAfter < time.Minute || c.OfflineAfter > 365*24*time.Hour) {
		errs = append(errs, fmt.Errorf("vuln-offline-after must be between 1m and 8760h (got %s)", c.OfflineAfter))
	}
	if c.MaxInventory < 0 {
		errs = append(errs, fmt.Errorf("vuln max inventory must not be negative (got %d)", c.MaxInventory))
	}
	return errors.Join(errs...)
}

// hostRec is a host's persisted record.
type hostRec struct {
	Digest  string    `json:"digest"`
	Updated time.Time `json:"updated"`
}

// Stats counts what the service did since it started, and what it holds.
type Stats struct {
	Index index.Stats `json:"index"`
	// DigestsReceived counts digest reports; DigestsKnown those whose
	// inventory was stored already.
	DigestsReceived uint64 `json:"digests_received"`
	DigestsKnown    uint64 `json:"digests_known"`
	// Uploads counts accepted full inventories; UploadsNew those that
	// were not stored yet; UploadsRejected refused ones.
	Uploads         uint64 `json:"uploads"`
	UploadsNew      uint64 `json:"uploads_new"`
	UploadsRejected uint64 `json:"uploads_rejected"`
	HostsPruned     uint64 `json:"hosts_pruned"`
	// Advisories is the last OSV import.
	Advisories Import `json:"advisories"`
}

// Import summarizes an OSV import.
type Import struct {
	Paths    []string  `json:"paths"`
	At       time.Time `json:"at"`
	Files    int       `json:"files"`
	Added    int       `json:"added"`
	Replaced int       `json:"replaced"`
	Ignored  int       `json:"ignored"`
	Skipped  int       `json:"skipped"`
	Errors   []string  `json:"errors,omitempty"`
}

// Service is the store and the index.
type Service struct {
	cfg Config
	log *slog.Logger
	db  *bolt.DB
	idx *index.Index

	mu      sync.Mutex
	hosts   map[string]string    // host → digest, as on disk
	missing map[string]time.Time // host → first seen unregistered
	imp     Import
	reload  sync.Mutex
	stripes [64]sync.Mutex // setHost, by host name

	digests, known, uploads, uploadsNew, rejected, pruned atomic.Uint64
}

// Open opens (or creates) the database under cfg.Dir, imports the
// advisories and rebuilds the index from the stored inventories and
// hosts. A stored inventory that no longer decodes or digests is logged
// and skipped; an unreadable OSV path is an error.
func Open(cfg Config) (_ *Service, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxInventory == 0 {
		cfg.MaxInventory = ingest.DefaultMaxInventory
	}
	if cfg.OfflineAfter == 0 {
		cfg.OfflineAfter = DefaultOfflineAfter
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("vulnstore: %w", err)
	}
	s := &Service{cfg: cfg, log: cfg.Logger.With("component", "vulnstore"), idx: index.New(),
		hosts: map[string]string{}, missing: map[string]time.Time{}}
	path := filepath.Join(cfg.Dir, "vuln.db")
	if s.db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second}); err != nil {
		return nil, fmt.Errorf("vulnstore: opening %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			s.db.Close()
		}
	}()
	if err := s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketInv, bucketHosts} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("vulnstore: %s: %w", path, err)
	}
	if _, err := s.Reload(); err != nil {
		return nil, err
	}
	if err := s.load(); err != nil {
		return nil, fmt.Errorf("vulnstore: loading %s: %w", path, err)
	}
	st := s.idx.Stats()
	s.log.Info("vulnerability index loaded", "path", path, "inventories", st.Inventories, "hosts", st.Hosts,
		"advisories", st.Advisories, "hits", st.Hits)
	return s, nil
}

// load rebuilds the index from the database.
func (s *Service) load() error {
	return s.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketInv).ForEach(func(k, v []byte) error {
			inv, err := decodeStored(v)
			if err == nil {
				var d string
				if d, _, err = s.idx.AddInventory(inv); err == nil && d != string(k) {
					err = fmt.Errorf("stored under %s but digests to %s", k, d)
				}
			}
			if err != nil {
				s.log.Error("stored inventory skipped", "digest", string(k), "error", err.Error())
			}
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketHosts).ForEach(func(k, v []byte) error {
			var h hostRec
			err := json.Unmarshal(v, &h)
			if err == nil {
				err = s.idx.SetHost(string(k), h.Digest)
			}
			if err != nil {
				s.log.Error("stored host skipped", "host", string(k), "error", err.Error())
				return nil
			}
			s.hosts[string(k)] = h.Digest
			return nil
		})
	})
}

func decodeStored(v []byte) (*inventory.Inventory, error) {
	zr, err := gzip.NewReader(bytes.NewReader(v))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	var inv inventory.Inventory
	if err := json.NewDecoder(zr).Decode(&inv); err != nil {
		return nil, err
	}
	return &inv, nil
}

func encodeStored(inv *inventory.Inventory) ([]byte, error) {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed) // a valid level: no error
	if err := json.NewEncoder(zw).Encode(inv); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Close closes the database.
func (s *Service) Close() error { return s.db.Close() }

// Index is the in-memory index queries read.
func (s *Service) Index() *index.Index { return s.idx }

// MaxInventory is the decompressed size limit of an upload.
func (s *Service) MaxInventory() int64 { return s.cfg.MaxInventory }

// Reload imports the configured OSV paths again (advisories of the same
// ID replace the old ones) and re-matches the fleet. Bad advisories are
// skipped and listed; an unreadable path fails the reload and leaves the
// index as it was.
func (s *Service) Reload() (Import, error) {
	s.reload.Lock()
	defer s.reload.Unlock()
	imp := Import{Paths: s.cfg.OSV, At: s.cfg.Now()}
	if len(s.cfg.OSV) == 0 {
		return imp, nil
	}
	res, err := osv.Import(s.cfg.OSV...)
	if err != nil {
		return imp, fmt.Errorf("vulnstore: importing advisories: %w", err)
	}
	ir := s.idx.AddAdvisories(res.Advisories)
	imp.Files, imp.Added, imp.Replaced, imp.Ignored, imp.Skipped = res.Files, ir.Added, ir.Replaced, res.Ignored, res.Skipped
	for _, e := range res.Errors {
		imp.Errors = append(imp.Errors, e.Error())
		s.log.Warn("advisory skipped", "error", e.Error())
	}
	s.mu.Lock()
	s.imp = imp
	s.mu.Unlock()
	s.log.Info("advisories imported", "paths", s.cfg.OSV, "files", res.Files, "added", ir.Added, "replaced", ir.Replaced,
		"ignored", res.Ignored, "skipped", res.Skipped)
	return imp, nil
}

// Digest records that host runs the inventory with this digest, if it
// is stored, and says whether it is. An unknown digest changes nothing:
// the host is to upload the inventory.
func (s *Service) Digest(d ingest.DigestReport) (ingest.DigestAnswer, error) {
	if err := d.Check(); err != nil {
		return ingest.DigestAnswer{}, err
	}
	s.digests.Add(1)
	if !s.idx.HasInventory(d.Digest) {
		return ingest.DigestAnswer{}, nil
	}
	s.known.Add(1)
	if err := s.setHost(d.Host, d.Digest); err != nil {
		return ingest.DigestAnswer{}, err
	}
	return ingest.DigestAnswer{Known: true}, nil
}

// Ingest stores an uploaded inventory once per digest and points the host
// at it. The inventory is canonicalized and digested again; a digest that
// differs from the host's is refused with ingest.ErrDigestMismatch and nothing is
// stored. The inventory is on disk before it is indexed.
func (s *Service) Ingest(u *ingest.Upload) (ingest.UploadAnswer, error) {
	ans, err := s.add(u)
	if err != nil {
		s.rejected.Add(1)
	}
	return ans, err
}

func (s *Service) add(u *ingest.Upload) (ingest.UploadAnswer, error) {
	if err := u.Check(); err != nil {
		return ingest.UploadAnswer{}, err
	}
	inv := &u.Inventory
	d := inv.Digest() // canonicalizes inv
	if d != u.Digest {
		return ingest.UploadAnswer{}, fmt.Errorf("%w: the inventory of host %s digests to %s, not %s as the host says; nothing was stored",
			ingest.ErrDigestMismatch, u.Host, d, u.Digest)
	}
	ans := ingest.UploadAnswer{Digest: d, Packages: len(inv.Packages)}
	if !s.idx.HasInventory(d) {
		enc, err := encodeStored(inv)
		if err != nil {
			return ans, fmt.Errorf("vulnstore: encoding inventory %s: %w", d, err)
		}
		if err := s.db.Batch(func(tx *bolt.Tx) error { return tx.Bucket(bucketInv).Put([]byte(d), enc) }); err != nil {
			return ans, fmt.Errorf("vulnstore: storing inventory %s: %w", d, err)
		}
		if _, ans.Added, err = s.idx.AddInventory(inv); err != nil {
			return ans, fmt.Errorf("%w: %v", ingest.ErrInvalid, err)
		}
	}
	if err := s.setHost(u.Host, d); err != nil {
		return ans, err
	}
	s.uploads.Add(1)
	if ans.Added {
		s.uploadsNew.Add(1)
		s.log.Info("inventory stored", "host", u.Host, "digest", d, "packages", len(inv.Packages), "ecosystem", inv.Ecosystem,
			"os", inv.OS.ID+" "+inv.OS.VersionID)
	}
	return ans, nil
}

// setHost persists host → digest when it changed, then indexes it. One
// host's reports are serialized (a stripe lock by name), so the disk and
// the index end on the same digest; different hosts' writes are batched.
func (s *Service) setHost(host, digest string) error {
	h := fnv.New32a()
	h.Write([]byte(host))
	stripe := &s.stripes[h.Sum32()%uint32(len(s.stripes))]
	stripe.Lock()
	defer stripe.Unlock()
	s.mu.Lock()
	same := s.hosts[host] == digest
	delete(s.missing, host)
	s.mu.Unlock()
	if same {
		return nil
	}
	rec, _ := json.Marshal(hostRec{Digest: digest, Updated: s.cfg.Now().UTC()})
	if err := s.db.Batch(func(tx *bolt.Tx) error { return tx.Bucket(bucketHosts).Put([]byte(host), rec) }); err != nil {
		return fmt.Errorf("vulnstore: storing host %s: %w", host, err)
	}
	if err := s.idx.SetHost(host, digest); err != nil {
		return err
	}
	s.mu.Lock()
	s.hosts[host] = digest
	s.mu.Unlock()
	return nil
}

// Prune drops hosts that registered reports as absent, and that sent no
// report either, for longer than OfflineAfter. registered returns an error when it cannot tell (the
// registry is re-listing), and the host is left alone. It returns the
// hosts dropped.
func (s *Service) Prune(registered func(host string) (bool, error)) ([]string, error) {
	now := s.cfg.Now()
	s.mu.Lock()
	names := make([]string, 0, len(s.hosts))
	for h := range s.hosts {
		names = append(names, h)
	}
	s.mu.Unlock()
	var drop []string
	for _, h := range names {
		ok, err := registered(h)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		if ok {
			delete(s.missing, h)
		} else if first, seen := s.missing[h]; !seen {
			s.missing[h] = now
		} else if now.Sub(first) >= s.cfg.OfflineAfter {
			drop = append(drop, h)
		}
		s.mu.Unlock()
	}
	var dropped []string
	for _, h := range drop {
		ok, err := s.drop(h)
		if err != nil {
			return dropped, err
		}
		if ok {
			dropped = append(dropped, h)
		}
	}
	if len(dropped) == 0 {
		return nil, nil
	}
	s.pruned.Add(uint64(len(dropped)))
	s.log.Info("unregistered hosts dropped from the vulnerability index", "hosts", len(dropped), "offline_after", s.cfg.OfflineAfter.String())
	return dropped, nil
}

// drop forgets host unless it reported since Prune decided (setHost
// clears its missing mark under the same stripe lock).
func (s *Service) drop(host string) (bool, error) {
	h := fnv.New32a()
	h.Write([]byte(host))
	stripe := &s.stripes[h.Sum32()%uint32(len(s.stripes))]
	stripe.Lock()
	defer stripe.Unlock()
	s.mu.Lock()
	_, still := s.missing[host]
	s.mu.Unlock()
	if !still {
		return false, nil
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketHosts).Delete([]byte(host)) }); err != nil {
		return false, fmt.Errorf("vulnstore: dropping host %s: %w", host, err)
	}
	s.mu.Lock()
	delete(s.hosts, host)
	delete(s.missing, host)
	s.mu.Unlock()
	s.idx.RemoveHost(host)
	return true, nil
}

// Rejected counts an upload refused before it reached Ingest (it did not
// decode).
func (s *Service) Rejected() { s.rejected.Add(1) }

// Stats returns the counters and the index's counts.
func (s *Service) Stats() Stats {
	s.mu.Lock()
	imp := s.imp
	s.mu.Unlock()
	return Stats{Index: s.idx.Stats(), DigestsReceived: s.digests.Load(), DigestsKnown: s.known.Load(),
		Uploads: s.uploads.Load(), UploadsNew: s.uploadsNew.Load(), UploadsRejected: s.rejected.Load(),
		HostsPruned: s.pruned.Load(), Advisories: imp}
}

//
