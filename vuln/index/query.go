package index

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/vigil-hids/vigil/vuln/osv"
	"github.com/vigil-hids/vigil/vuln/version"
)

// Hit is one vulnerable package on a host or inventory.
type Hit struct {
	// Advisory is the advisory's own ID, e.g. "DEBIAN-CVE-2024-0727".
	Advisory string `json:"advisory"`
	// CVEs are the advisory's CVE IDs.
	CVEs     []string     `json:"cves,omitempty"`
	Severity osv.Severity `json:"severity"`
	// Ecosystem is the release the advisory is for, e.g. "debian:12".
	Ecosystem string `json:"ecosystem"`
	// Package is the package the advisory names: the source package on
	// Debian, Ubuntu and Alpine, the binary rpm on the Red Hat family.
	Package string `json:"package"`
	// Binaries are the installed binary packages built from Package,
	// when it is a source package.
	Binaries []string `json:"binaries,omitempty"`
	// Installed is the installed version of Package.
	Installed string `json:"installed"`
	// Fixed is the first version without the flaw; empty when there is
	// no fix yet.
	Fixed string `json:"fixed,omitempty"`
}

// InventoryHits are the hits of one inventory and the hosts running it.
type InventoryHits struct {
	Digest string   `json:"digest"`
	Hosts  []string `json:"hosts"`
	Hits   []Hit    `json:"hits"`
}

// CVEHosts answers "which hosts does this CVE affect".
type CVEHosts struct {
	ID         string       `json:"id"`
	Severity   osv.Severity `json:"severity"`
	Advisories []string     `json:"advisories"`
	HostCount  int          `json:"host_count"`
	// Shown is how many host names Inventories lists; Truncated is set
	// when a limit left some out (HostCount still counts them).
	Shown       int             `json:"shown"`
	Truncated   bool            `json:"truncated,omitempty"`
	Inventories []InventoryHits `json:"inventories"`
}

// HostsForCVE returns the hosts a CVE (or advisory ID) affects, grouped
// by inventory, with the vulnerable packages of each.
func (x *Index) HostsForCVE(id string) (*CVEHosts, error) { return x.HostsForCVELimit(id, 0) }

// HostsForCVELimit is HostsForCVE listing at most limit host names (0:
// all); inventories past the limit are counted, not listed, so a query
// about a CVE on the whole fleet costs what the listed part does.
func (x *Index) HostsForCVELimit(id string, limit int) (*CVEHosts, error) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	advs, ok := x.byCVE[id]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownCVE, id)
	}
	out := &CVEHosts{ID: id}
	var invs []uint32
	for _, a := range advs {
		adv := &x.advs[a]
		out.Advisories = append(out.Advisories, adv.a.ID)
		out.Severity = maxSeverity(out.Severity, adv.a.Severity)
		invs = append(invs, adv.invs...)
	}
	if len(advs) > 1 {
		slices.Sort(invs)
		invs = slices.Compact(invs)
	}
	total := 0
	for _, inv := range invs {
		total += len(x.invs[inv].hosts)
	}
	out.HostCount = total
	if limit <= 0 || limit > total {
		limit = total
	}
	names := make([]string, 0, limit) // one allocation for every host name listed
	for _, inv := range invs {
		r := &x.invs[inv]
		if len(r.hosts) == 0 {
			continue
		}
		if len(names) == limit {
			break
		}
		start := len(names)
		for _, h := range r.hosts {
			if len(names) == limit {
				break
			}
			names = append(names, x.hosts[h].name)
		}
		ih := InventoryHits{Digest: r.digest, Hosts: names[start:len(names):len(names)]}
		for _, a := range advs {
			ih.Hits = x.advHits(r, &x.advs[a], ih.Hits)
		}
		out.Inventories = append(out.Inventories, ih)
	}
	out.Shown = len(names)
	out.Truncated = out.Shown < out.HostCount
	return out, nil
}

// advHits appends r's hits of advisory adv. An inventory's hits are
// sorted by affected id, and an advisory's affected ids are consecutive,
// so they are found by binary search.
func (x *Index) advHits(r *invRec, adv *advRec, out []Hit) []Hit {
	if len(adv.affs) == 0 {
		return out
	}
	lo, hi := adv.affs[0], adv.affs[len(adv.affs)-1]
	i, _ := slices.BinarySearchFunc(r.hits, lo, func(h hit, aff uint32) int { return cmp.Compare(h.aff, aff) })
	for ; i < len(r.hits) && r.hits[i].aff <= hi; i++ {
		out = append(out, x.hit(r, r.hits[i], nil))
	}
	return out
}

// binaries maps each (source, version) of an inventory to its binary
// packages' names.
func (x *Index) binaries(r *invRec) map[uint64][]string {
	m := make(map[uint64][]string, len(r.pkgs)/2)
	for _, p := range r.pkgs {
		k := uint64(p.src)<<32 | uint64(p.srcVer)
		m[k] = append(m[k], x.names.str(p.name))
	}
	return m
}

// hit turns an internal hit into its answer; bins is r's binaries map,
// or nil to scan r's packages for this one hit.
func (x *Index) hit(r *invRec, h hit, bins map[uint64][]string) Hit {
	af := &x.affs[h.aff]
	a := x.advs[af.adv].a
	out := Hit{
		Advisory: a.ID, CVEs: a.CVEs, Severity: a.Severity, Ecosystem: af.a.Ecosystem.String(),
		Package: x.names.str(h.name), Installed: x.vers.str(h.installed), Fixed: x.vers.str(h.fixed),
	}
	switch {
	case !af.source:
	case bins != nil:
		out.Binaries = bins[uint64(h.name)<<32|uint64(h.installed)]
	default:
		for _, p := range r.pkgs {
			if p.src == h.name && p.srcVer == h.installed {
				out.Binaries = append(out.Binaries, x.names.str(p.name))
			}
		}
	}
	return out
}

func maxSeverity(a, b osv.Severity) osv.Severity {
	if b.Level > a.Level || (b.Level == a.Level && b.Score > a.Score) {
		return b
	}
	return a
}

// HostReport answers "what is this host vulnerable to".
type HostReport struct {
	Host     string `json:"host"`
	Digest   string `json:"digest"`
	OS       string `json:"os"`
	Packages int    `json:"packages"`
	// Partial is set when the host's inventory was incomplete, so the
	// hits may be too.
	Partial bool  `json:"partial,omitempty"`
	Hits    []Hit `json:"hits"`
}

// CVEsForHost returns the hits on host, most severe first.
func (x *Index) CVEsForHost(host string) (*HostReport, error) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	id, ok := x.byHost[host]
	if !ok || x.hosts[id].inv < 0 {
		return nil, fmt.Errorf("%w %q", ErrUnknownHost, host)
	}
	r := &x.invs[x.hosts[id].inv]
	out := &HostReport{Host: host, Digest: r.digest, OS: strings.TrimSpace(r.os.ID + " " + r.os.VersionID), Packages: len(r.pkgs), Partial: r.partial > 0}
	bins := x.binaries(r)
	for _, h := range r.hits {
		out.Hits = append(out.Hits, x.hit(r, h, bins))
	}
	slices.SortFunc(out.Hits, func(a, b Hit) int {
		return cmp.Or(
			-cmp.Compare(a.Severity.Level, b.Severity.Level),
			-cmp.Compare(a.Severity.Score, b.Severity.Score),
			cmp.Compare(a.Advisory, b.Advisory),
			cmp.Compare(a.Package, b.Package),
		)
	})
	return out, nil
}

// PackageVersion is one installed version of a package across the fleet.
type PackageVersion struct {
	Version     string `json:"version"`
	Ecosystem   string `json:"ecosystem"`
	Inventories int    `json:"inventories"`
	Hosts       int    `json:"hosts"`
}

// Packages returns the installed versions of the binary package name
// across the fleet, with how many hosts run each. When below is set only
// versions older than it are returned, compared by each inventory's own
// ecosystem rules.
func (x *Index) Packages(name, below string) []PackageVersion {
	x.mu.RLock()
	defer x.mu.RUnlock()
	id, ok := x.names.lookup(name)
	if !ok {
		return nil
	}
	type key struct {
		ver uint32
		eco string
	}
	agg := map[key]*PackageVersion{}
	for _, p := range x.binPost[id] {
		r := &x.invs[p.inv]
		k := key{p.ver, r.eco}
		pv, ok := agg[k]
		if !ok {
			v := x.vers.str(p.ver)
			if below != "" && version.Compare(ecoKind(r.eco), v, below) >= 0 {
				continue
			}
			pv = &PackageVersion{Version: v, Ecosystem: r.eco}
			agg[k] = pv
		}
		pv.Inventories++
		pv.Hosts += len(r.hosts)
	}
	out := make([]PackageVersion, 0, len(agg))
	for _, pv := range agg {
		out = append(out, *pv)
	}
	slices.SortFunc(out, func(a, b PackageVersion) int {
		return cmp.Or(cmp.Compare(a.Ecosystem, b.Ecosystem), version.Compare(ecoKind(a.Ecosystem), a.Version, b.Version))
	})
	return out
}

// CVECount is one line of Top.
type CVECount struct {
	ID          string       `json:"id"`
	Severity    osv.Severity `json:"severity"`
	Hosts       int          `json:"hosts"`
	Inventories int          `json:"inventories"`
}

// Top returns the n CVEs (or advisory IDs, for advisories without a CVE)
// affecting the most hosts, the most severe first among equals.
func (x *Index) Top(n int) []CVECount {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make([]CVECount, 0, len(x.byCVE))
	var invs []uint32
	for key, advs := range x.byCVE {
		if len(advs) == 1 && x.advs[advs[0]].a.ID == key && len(x.advs[advs[0]].a.CVEs) > 0 {
			continue // the advisory's own ID, counted under its CVEs
		}
		c := CVECount{ID: key}
		invs = invs[:0]
		for _, a := range advs {
			c.Severity = maxSeverity(c.Severity, x.advs[a].a.Severity)
			invs = append(invs, x.advs[a].invs...)
		}
		if len(advs) > 1 {
			slices.Sort(invs)
			invs = slices.Compact(invs)
		}
		for _, inv := range invs {
			c.Hosts += len(x.invs[inv].hosts)
		}
		c.Inventories = len(invs)
		if c.Hosts > 0 {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b CVECount) int {
		return cmp.Or(
			-cmp.Compare(a.Hosts, b.Hosts),
			-cmp.Compare(a.Severity.Level, b.Severity.Level),
			-cmp.Compare(a.Severity.Score, b.Severity.Score),
			cmp.Compare(a.ID, b.ID),
		)
	})
	if n > 0 && len(out) > n {
		out = out[:n]
	}
	return out
}

// Stats counts what the index holds.
type Stats struct {
	Hosts       int `json:"hosts"`
	Inventories int `json:"inventories"`
	Packages    int `json:"packages"`
	Versions    int `json:"versions"`
	Advisories  int `json:"advisories"`
	Affected    int `json:"affected"`
	Hits        int `json:"hits"`
}

// Stats returns the index's counts.
func (x *Index) Stats() Stats {
	x.mu.RLock()
	defer x.mu.RUnlock()
	s := Stats{Inventories: len(x.invs), Packages: x.names.len() - 1, Versions: x.vers.len() - 1, Advisories: len(x.advs), Affected: len(x.affs)}
	for i := range x.invs {
		s.Hits += len(x.invs[i].hits)
		s.Hosts += len(x.invs[i].hosts)
	}
	return s
}
