// Package signing signs and verifies Vigil releases.
//
// Keys, signatures and secret-key files are minisign's own formats (through
// aead.dev/minisign), so the stock `minisign -V` checks what vigil-sign makes.
// A release is a bundle: a directory holding the binary, a JSON manifest that
// names plugin, version, platform, length, sha256, expiry and minimum host
// version, and one detached signature per release key over the manifest's
// canonical body. Verification counts distinct trusted keys against a
// threshold and refuses expired, mix-and-match, downgraded or tampered
// releases with the sentinels below. A keyring is a root-signed list of
// release keys, so release keys rotate without touching every host.
//
// etcd and the download server are untrusted mirrors: nothing they say is
// believed unless a threshold of trusted keys signed it.
package signing
