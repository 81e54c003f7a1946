package signing

import "errors"

// Refusals. Each is returned wrapped with the detail of what was refused.
var (
	// ErrMalformed: a key, signature, manifest, keyring or trust file does not parse.
	ErrMalformed = errors.New("signing: malformed input")
	// ErrNoSignature: the document carries no signature at all.
	ErrNoSignature = errors.New("signing: missing signature, an unsigned release could come from anyone who can write to etcd or the download server")
	// ErrBadSignature: a signature that names a trusted key does not verify.
	ErrBadSignature = errors.New("signing: bad signature, the signed bytes were altered or the signature forged")
	// ErrThreshold: fewer distinct trusted keys signed than the threshold asks.
	ErrThreshold = errors.New("signing: too few distinct trusted keys, one stolen key must not be enough to ship code")
	// ErrHashMismatch: the binary's sha256 differs from the signed manifest.
	ErrHashMismatch = errors.New("signing: sha256 mismatch, the binary is not the one that was signed")
	// ErrLengthMismatch: the binary is shorter or longer than the signed length.
	ErrLengthMismatch = errors.New("signing: length mismatch, the binary is truncated or padded")
	// ErrExpired: the manifest's expiry has passed.
	ErrExpired = errors.New("signing: manifest expired, an old release replayed by a mirror must not install")
	// ErrWrongPlugin: the manifest is for another plugin.
	ErrWrongPlugin = errors.New("signing: manifest for another plugin, a signed release must not be reused under another name")
	// ErrWrongPlatform: the manifest is for another os or arch.
	ErrWrongPlatform = errors.New("signing: manifest for another platform, a signed release must not be reused on another os or arch")
	// ErrDowngrade: the version is lower than the running one and no signed rollback allows it.
	ErrDowngrade = errors.New("signing: downgrade without signed rollback, an old version may carry fixed vulnerabilities")
	// ErrHostTooOld: the running host is older than the manifest's minimum host version.
	ErrHostTooOld = errors.New("signing: host older than the release's minimum host version")
	// ErrKeyringExpired: the keyring's expiry has passed.
	ErrKeyringExpired = errors.New("signing: keyring expired, an old keyring could still list a revoked release key")
	// ErrKeyringRollback: the keyring's serial is lower than one already accepted.
	ErrKeyringRollback = errors.New("signing: keyring older than one already accepted, a replayed keyring could bring back a revoked release key")
	// ErrKeyringUnsigned: the keyring lacks a threshold of root signatures.
	ErrKeyringUnsigned = errors.New("signing: keyring not signed by enough root keys, release keys are only trusted through the roots")
)
