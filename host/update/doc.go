// Package update installs signed plugin releases on a host, step by step:
// the manifest read from etcd is verified (a threshold of distinct trusted
// keys, expiry, plugin and platform, no downgrade without a signed
// rollback, no replay of an older manifest, the minimum host version);
// the binary is downloaded from the server's artifact store at a moment
// spread by a hash of the host name, capped at the signed length, with
// timeouts and resumption; its length and sha256 are checked; it is
// renamed atomically (with fsync) into {dir}/{plugin}/{version}/; the
// plugin restarts from it with go-plugin's SecureConfig pinned to the
// signed sha256; and a health gate (handshake, then no crash for a window)
// keeps it or brings the previous version back at once.
//
// etcd and the download server are untrusted mirrors: nothing they send is
// believed before it is checked against the signed manifest.
//
// Fetch (verify and download into a verified file) is usable on its own,
// e.g. by the host's self-update.
package update
