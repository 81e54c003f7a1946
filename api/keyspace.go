// Package api holds the wire types that vigil-host, vigil-server and vigilctl
// share: the etcd keyspace, desired state, registration values and history
// records. Nothing here talks to etcd or the network; both sides import it
// so that nothing is defined twice.
package api

import (
	"fmt"
	"strings"
)

// DefaultPrefix is the default root of Vigil's etcd keyspace.
const DefaultPrefix = "/hids"

// Keyspace builds the etcd keys under one prefix (DESIGN.md, "Control plane").
type Keyspace struct {
	Prefix string
}

// NewKeyspace returns the keyspace under prefix ("" means DefaultPrefix),
// without a trailing slash.
func NewKeyspace(prefix string) Keyspace {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return Keyspace{Prefix: strings.TrimRight(prefix, "/")}
}

// Agents is the prefix of every host registration.
func (k Keyspace) Agents() string { return k.Prefix + "/agent/master/" }

// Agent is a host's registration key, written by the host with its lease.
func (k Keyspace) Agent(host string) string { return k.Agents() + host }

// Configs is the prefix of every desired-state document.
func (k Keyspace) Configs() string { return k.Prefix + "/server/config/" }

// ScopeKey is the desired-state key of a scope.
func (k Keyspace) ScopeKey(s Scope) string {
	switch s.Kind {
	case ScopeFleet:
		return k.Configs() + "_fleet/master"
	case ScopeGroup:
		return k.Configs() + "_group/" + s.Label + "=" + s.Value + "/master"
	default:
		return k.Configs() + s.Host + "/master"
	}
}

// Releases is the prefix of the signed release manifests.
func (k Keyspace) Releases() string { return k.Prefix + "/releases/" }

// ReleaseVersion is the prefix of one version's signed release manifests,
// one key per platform under it (Release).
func (k Keyspace) ReleaseVersion(plugin, version string) string {
	return k.Releases() + plugin + "/" + version + "/"
}

// Release is the key of the signed release manifest of one platform of a
// version: /hids/releases/{plugin}/{version}/{os}/{arch}, the manifest
// byte for byte as signed (its os and arch are the key's).
func (k Keyspace) Release(plugin, version, os, arch string) string {
	return k.ReleaseVersion(plugin, version) + os + "/" + arch
}

// ParseRelease splits a key under Releases() into its parts; ok is false
// for any key that is not exactly {plugin}/{version}/{os}/{arch} below it.
func (k Keyspace) ParseRelease(key string) (plugin, version, os, arch string, ok bool) {
	rest, found := strings.CutPrefix(key, k.Releases())
	if !found {
		return "", "", "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 {
		return "", "", "", "", false
	}
	for _, p := range parts {
		if p == "" {
			return "", "", "", "", false
		}
	}
	return parts[0], parts[1], parts[2], parts[3], true
}

// Platform is how a release platform is written: "{os}/{arch}".
func Platform(os, arch string) string { return os + "/" + arch }

// Keyring is the key of the published root-signed release keyring
// (keyring.json byte for byte). Hosts with pinned root keys take a newer
// one from it; etcd is only its mirror, the root signatures are the trust.
func (k Keyspace) Keyring() string { return k.Prefix + "/keyring/current" }

// KeyringHistory is the prefix of the published keyrings' records
// (KeyringRecord), one per serial, kept after a newer one is published.
func (k Keyspace) KeyringHistory() string { return k.Prefix + "/keyring/history/" }

// KeyringRecordKey is the key of the record of one published serial,
// zero-padded so keys sort by serial.
func (k Keyspace) KeyringRecordKey(serial uint64) string {
	return fmt.Sprintf("%s%020d", k.KeyringHistory(), serial)
}

// History is the prefix of a scope's change history.
func (k Keyspace) History(s Scope) string { return k.Prefix + "/history/" + s.String() + "/" }

// HistoryEntry is the key of one history record; seq is zero-padded so keys
// sort in order.
func (k Keyspace) HistoryEntry(s Scope, seq int64) string {
	return fmt.Sprintf("%s%016d", k.History(s), seq)
}

// Servers is the prefix of server replica registrations.
func (k Keyspace) Servers() string { return k.Prefix + "/servers/" }

// Election is the prefix of the server leader election.
func (k Keyspace) Election() string { return k.Prefix + "/election/" }

// RemovedReleases is the prefix of the records of removed releases
// (vigilctl release rm): who removed which manifest, when and why. It is
// not under Releases(), which hosts read.
func (k Keyspace) RemovedReleases() string { return k.Prefix + "/releases-removed/" }

// RemovedRelease is the key of the removal record of one platform of a
// version: /hids/releases-removed/{plugin}/{version}/{os}/{arch}.
func (k Keyspace) RemovedRelease(plugin, version, os, arch string) string {
	return k.RemovedReleases() + plugin + "/" + version + "/" + os + "/" + arch
}
