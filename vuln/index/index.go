// Package index is the fleet's vulnerability index. Inventories are
// stored once per digest (hosts built from one image share one), each
// host points at its inventory, and an inverted index maps each package
// name, binary and source, to the inventories holding it and at which
// version. Advisories (package osv) are matched against that index with
// the ecosystem's own version rules, only on hosts of the advisory's
// distribution release, and by source package where the distribution's
// advisories name source packages (Debian, Ubuntu, Alpine). Every hit
// keeps the installed and the fixed version.
//
// Memory stays compact at fleet scale: names and versions are interned to
// uint32 ids, hosts are integer ids, an inventory is a sorted slice of
// id records, and verdicts (does this version fall in this affected
// range) are computed once per distinct version and cached.
//
// An Index is safe for concurrent use: queries share a read lock, ingest
// and advisory imports take the write lock.
package index

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/vigil-hids/vigil/vuln/inventory"
	"github.com/vigil-hids/vigil/vuln/osv"
	"github.com/vigil-hids/vigil/vuln/version"
)

// Sentinel errors, matched with errors.Is.
var (
	ErrUnknownDigest = errors.New("index: unknown inventory digest")
	ErrUnknownHost   = errors.New("index: unknown host")
	ErrUnknownCVE    = errors.New("index: no advisory for this ID")
)

// posting says inventory inv holds a package at version ver.
type posting struct{ inv, ver uint32 }

// pkgRec is one package of an inventory, as interned ids.
type pkgRec struct{ name, ver, src, srcVer uint32 }

// hit is one match in an inventory: affected entry aff applies to the
// package name at version installed, fixed in fixed (0: no fix yet).
type hit struct{ aff, name, installed, fixed uint32 }

type invRec struct {
	digest   string
	os       inventory.OS
	eco      string
	platform uint32
	partial  int
	pkgs     []pkgRec // sorted by name, version
	hosts    []uint32 // host ids, in no order
	hits     []hit
}

type hostRec struct {
	name string
	inv  int32 // -1: none
	pos  int32 // index in invs[inv].hosts
}

// affRec is one affected entry of one advisory.
type affRec struct {
	adv    uint32
	a      *osv.Affected
	eco    uint32 // interned ecosystem string
	name   uint32 // interned package name
	source bool   // matched against source packages
}

type advRec struct {
	a    *osv.Advisory
	affs []uint32
	invs []uint32 // sorted, unique
}

// Index is the fleet index. The zero value is not usable; call New.
type Index struct {
	mu sync.RWMutex

	names, vers, ecos, platforms *interner
	platformOS                   []inventory.OS // by platform id

	invs     []invRec
	byDigest map[string]uint32

	hosts  []hostRec
	byHost map[string]uint32

	binPost map[uint32][]posting // binary name → inventories
	srcPost map[uint32][]posting // source name → inventories

	advs    []advRec
	byAdvID map[string]uint32
	byCVE   map[string][]uint32 // CVE or advisory ID → advisories
	affs    []affRec
	byName  map[uint32][]uint32 // package name → affected entries naming it

	ecoMatch map[uint64]bool       // ecosystem<<32|platform → applies
	verdicts map[verdictKey]uint32 // 1 not affected, fixed+2 affected
}

// verdictKey names a verdict by the affected entry itself, not its id,
// so verdicts survive the renumbering of an import and only a replaced
// advisory's are computed again.
type verdictKey struct {
	a   *osv.Affected
	ver uint32
}

// New returns an empty index.
func New() *Index {
	return &Index{
		names: newInterner(), vers: newInterner(), ecos: newInterner(), platforms: newInterner(),
		platformOS: []inventory.OS{{}},
		byDigest:   map[string]uint32{}, byHost: map[string]uint32{},
		binPost: map[uint32][]posting{}, srcPost: map[uint32][]posting{},
		byAdvID: map[string]uint32{}, byCVE: map[string][]uint32{}, byName: map[uint32][]uint32{},
		ecoMatch: map[uint64]bool{}, verdicts: map[verdictKey]uint32{},
	}
}

// sourceMatched says whether a distribution's advisories name source
// packages (Debian, Ubuntu: source packages; Alpine: origins) rather
// than binary ones (the Red Hat family).
func sourceMatched(k version.Kind) bool { return k == version.Dpkg || k == version.APK }

// HasInventory says whether an inventory with this digest is stored, so
// the server asks a host for its full inventory only when it is not.
func (x *Index) HasInventory(digest string) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.byDigest[digest]
	return ok
}

// AddInventory stores inv once under its digest, indexes it and matches
// it against the advisories. It returns the digest and whether the
// inventory was new.
func (x *Index) AddInventory(inv *inventory.Inventory) (digest string, added bool, err error) {
	digest = inv.Digest() // canonicalizes: sorted, unique
	kind := inv.Kind()
	if kind == version.Unknown {
		return digest, false, fmt.Errorf("index: inventory %s: unknown ecosystem %q (known: dpkg, rpm, apk)", digest, inv.Ecosystem)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, ok := x.byDigest[digest]; ok {
		return digest, false, nil
	}
	id := uint32(len(x.invs))
	rec := invRec{
		digest: digest, os: inv.OS, eco: inv.Ecosystem, partial: len(inv.Partial),
		platform: x.platform(inv.OS),
		pkgs:     make([]pkgRec, 0, len(inv.Packages)),
	}
	for _, p := range inv.Packages {
		rec.pkgs = append(rec.pkgs, pkgRec{
			name: x.names.id(p.Name), ver: x.vers.id(p.Version),
			src: x.names.id(p.SourceName()), srcVer: x.vers.id(p.SourceVer()),
		})
	}
	x.invs = append(x.invs, rec)
	x.byDigest[digest] = id

	// Postings, and matching against the advisories naming these
	// packages. A source shared by several binaries is posted once.
	seenSrc := map[uint64]struct{}{}
	r := &x.invs[id]
	for _, p := range r.pkgs {
		x.binPost[p.name] = append(x.binPost[p.name], posting{id, p.ver})
		x.matchPackage(id, p.name, p.ver, false)
		key := uint64(p.src)<<32 | uint64(p.srcVer)
		if _, ok := seenSrc[key]; ok {
			continue
		}
		seenSrc[key] = struct{}{}
		x.srcPost[p.src] = append(x.srcPost[p.src], posting{id, p.srcVer})
		x.matchPackage(id, p.src, p.srcVer, true)
	}
	sortHits(r.hits)
	return digest, true, nil
}

// matchPackage matches one package of inventory inv against the
// affected entries naming it; the inventory id is the largest, so the
// advisories' sorted inventory lists stay sorted by appending.
func (x *Index) matchPackage(inv, name, ver uint32, source bool) {
	for _, aff := range x.byName[name] {
		af := &x.affs[aff]
		if af.source != source {
			continue
		}
		if ok, fixed := x.applies(aff, inv, ver); ok {
			x.invs[inv].hits = append(x.invs[inv].hits, hit{aff: aff, name: name, installed: ver, fixed: fixed})
			adv := &x.advs[af.adv]
			if n := len(adv.invs); n == 0 || adv.invs[n-1] != inv {
				adv.invs = append(adv.invs, inv)
			}
		}
	}
}

// sortHits orders an inventory's hits by affected id, as queries expect;
// rematch appends them in that order already.
func sortHits(hits []hit) {
	slices.SortFunc(hits, func(a, b hit) int { return cmp.Compare(a.aff, b.aff) })
}

// applies says whether affected entry aff applies to version ver on
// inventory inv's platform, with the fixed version's id.
func (x *Index) applies(aff, inv, ver uint32) (bool, uint32) {
	af := &x.affs[aff]
	plat := x.invs[inv].platform
	ek := uint64(af.eco)<<32 | uint64(plat)
	ok, seen := x.ecoMatch[ek]
	if !seen {
		o := x.platformOS[plat]
		ok = af.a.Ecosystem.Matches(o.ID, o.VersionID) && ecoKind(x.invs[inv].eco) == af.a.Ecosystem.Kind
		x.ecoMatch[ek] = ok
	}
	if !ok {
		return false, 0
	}
	if v := x.verdict(aff, ver); v != 1 {
		return true, v - 2
	}
	return false, 0
}

// verdict says whether version ver falls in affected entry aff: 1 when
// not, the fixed version's id + 2 when it does. Each pair is compared
// once and cached.
func (x *Index) verdict(aff, ver uint32) uint32 {
	vk := verdictKey{x.affs[aff].a, ver}
	v, seen := x.verdicts[vk]
	if !seen {
		affected, fixed := x.affs[aff].a.Affects(x.vers.str(ver))
		v = 1
		if affected {
			v = x.vers.id(fixed) + 2
		}
		x.verdicts[vk] = v
	}
	return v
}

func ecoKind(eco string) version.Kind {
	k, _ := version.ParseKind(eco)
	return k
}

func (x *Index) platform(o inventory.OS) uint32 {
	n := x.platforms.len()
	id := x.platforms.id(o.ID + "\x00" + o.VersionID)
	if int(id) == n {
		x.platformOS = append(x.platformOS, inventory.OS{ID: o.ID, VersionID: o.VersionID})
	}
	return id
}

// SetHost points host at the stored inventory with this digest,
// replacing the host's previous one.
func (x *Index) SetHost(host, digest string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	inv, ok := x.byDigest[digest]
	if !ok {
		return fmt.Errorf("%w %s (host %s)", ErrUnknownDigest, digest, host)
	}
	id, ok := x.byHost[host]
	if !ok {
		id = uint32(len(x.hosts))
		x.hosts = append(x.hosts, hostRec{name: host, inv: -1})
		x.byHost[host] = id
	}
	h := &x.hosts[id]
	if h.inv == int32(inv) {
		return nil
	}
	x.detach(id)
	r := &x.invs[inv]
	h.inv, h.pos = int32(inv), int32(len(r.hosts))
	r.hosts = append(r.hosts, id)
	return nil
}

// RemoveHost forgets host; unknown hosts are ignored.
func (x *Index) RemoveHost(host string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if id, ok := x.byHost[host]; ok {
		x.detach(id)
	}
}

// detach takes host id off its inventory's host list.
func (x *Index) detach(id uint32) {
	h := &x.hosts[id]
	if h.inv < 0 {
		return
	}
	r := &x.invs[h.inv]
	last := len(r.hosts) - 1
	moved := r.hosts[last]
	r.hosts[h.pos] = moved
	x.hosts[moved].pos = h.pos
	r.hosts = r.hosts[:last]
	h.inv, h.pos = -1, 0
}

// ImportResult says what an advisory import changed.
type ImportResult struct {
	// Added and Replaced count advisories by ID; an advisory whose ID is
	// already indexed replaces the old one.
	Added, Replaced int
	// Affected counts the affected entries indexed.
	Affected int
}

// AddAdvisories indexes advs, replacing advisories of the same ID, and
// re-matches the whole fleet.
func (x *Index) AddAdvisories(advs []*osv.Advisory) ImportResult {
	x.mu.Lock()
	defer x.mu.Unlock()
	var res ImportResult
	for _, a := range advs {
		if id, ok := x.byAdvID[a.ID]; ok {
			for j := range x.advs[id].a.Affected { // the old entries' verdicts
				old := &x.advs[id].a.Affected[j]
				for k := range x.verdicts {
					if k.a == old {
						delete(x.verdicts, k)
					}
				}
			}
			x.advs[id].a = a
			res.Replaced++
			continue
		}
		x.byAdvID[a.ID] = uint32(len(x.advs))
		x.advs = append(x.advs, advRec{a: a})
		res.Added++
	}
	x.rebuildAdvisories()
	res.Affected = len(x.affs)
	x.rematch()
	return res
}

// rebuildAdvisories re-derives the affected entries and the lookup maps
// from x.advs.
func (x *Index) rebuildAdvisories() {
	x.affs = x.affs[:0]
	clear(x.byName)
	clear(x.byCVE)
	clear(x.ecoMatch)
	for i := range x.advs {
		adv := &x.advs[i]
		adv.affs = adv.affs[:0]
		for j := range adv.a.Affected {
			af := &adv.a.Affected[j]
			id := uint32(len(x.affs))
			name := x.names.id(af.Package)
			x.affs = append(x.affs, affRec{
				adv: uint32(i), a: af, eco: x.ecos.id(af.Ecosystem.String() + "\x00" + af.Ecosystem.Kind.String()),
				name: name, source: sourceMatched(af.Ecosystem.Kind),
			})
			adv.affs = append(adv.affs, id)
			x.byName[name] = append(x.byName[name], id)
		}
		for _, k := range adv.a.Keys() {
			x.byCVE[k] = append(x.byCVE[k], uint32(i))
		}
		if len(adv.a.CVEs) > 0 { // an advisory is also found by its own ID
			x.byCVE[adv.a.ID] = append(x.byCVE[adv.a.ID], uint32(i))
		}
	}
}

// rematch recomputes every hit of every inventory from the postings.
func (x *Index) rematch() {
	for i := range x.invs {
		x.invs[i].hits = x.invs[i].hits[:0]
	}
	for i := range x.advs {
		x.advs[i].invs = x.advs[i].invs[:0]
	}
	// Per affected entry, which platforms it applies to and each
	// version's verdict are decided once, then read from small local
	// caches while its postings are scanned.
	platOK := make([]int8, x.platforms.len()) // 0 unknown, 1 no, 2 yes
	vcache := map[uint32]uint32{}
	for aff := range x.affs {
		af := &x.affs[aff]
		posts := x.binPost[af.name]
		if af.source {
			posts = x.srcPost[af.name]
		}
		if len(posts) == 0 {
			continue
		}
		clear(platOK)
		clear(vcache)
		adv := &x.advs[af.adv]
		for _, p := range posts {
			r := &x.invs[p.inv]
			switch platOK[r.platform] {
			case 1:
				continue
			case 0:
				o := x.platformOS[r.platform]
				platOK[r.platform] = 1
				if af.a.Ecosystem.Matches(o.ID, o.VersionID) && ecoKind(r.eco) == af.a.Ecosystem.Kind {
					platOK[r.platform] = 2
				} else {
					continue
				}
			}
			v, ok := vcache[p.ver]
			if !ok {
				v = x.verdict(uint32(aff), p.ver)
				vcache[p.ver] = v
			}
			if v == 1 {
				continue
			}
			r.hits = append(r.hits, hit{aff: uint32(aff), name: af.name, installed: p.ver, fixed: v - 2})
			adv.invs = append(adv.invs, p.inv)
		}
	}
	for i := range x.advs {
		adv := &x.advs[i]
		slices.Sort(adv.invs)
		adv.invs = slices.Compact(adv.invs)
	}
}
