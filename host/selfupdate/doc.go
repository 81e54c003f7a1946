// Package selfupdate replaces vigil-host's own binary with a signed
// release and rolls back to the previous binary when the new one does not
// come up healthy.
//
// # Install
//
// Install takes a release fetched from an untrusted mirror (the signed
// manifest, the downloaded file and the per-key minisign signatures of the
// binary) and:
//
//  1. verifies the manifest with signing.VerifyManifest against the pinned
//     trust, every Expect field filled: plugin "vigil-host", this os/arch,
//     no downgrade below the running version unless the manifest carries a
//     signed rollback, the running host at least min_host_version, expiry;
//  2. checks the file's length and sha256 against the manifest;
//  3. hands the bytes to github.com/minio/selfupdate's
//     PrepareAndCheckBinary with TargetPath set explicitly, the manifest's
//     sha256 as Checksum and its minisign Verifier loaded with the
//     binary's .minisig by a trusted key; it writes .vigil-host.new next to
//     the target;
//  4. fsyncs .vigil-host.new, hard-links the running binary to
//     .vigil-host.prev (the kept previous copy), writes the trial marker,
//     then swaps with a single rename(2) of .vigil-host.new over the target
//     and fsyncs the directory.
//
// selfupdate's own CommitBinary is not used: it renames the target away
// and then the new file in, so a crash between the two renames leaves no
// binary at the target path, and it never fsyncs the new file, so a power
// loss can leave an empty target. rename(2) over an existing name is
// atomic: at every instant the target path is the old or the new complete,
// synced binary. Every crash point:
//
//   - before the marker is written: the target is the old binary; a stale
//     .vigil-host.new is removed at the next start.
//   - marker written, rename not done (or not yet durable): the old binary
//     starts, sees a marker for another version that never started, drops
//     it and reports the install as failed; the desired state retries.
//   - rename done: the new binary starts as a trial (below).
//
// Recover, called first at every start, also repairs the state selfupdate's
// CommitBinary can leave (target missing after its first rename) from the
// kept .vigil-host.prev, or from selfupdate's .vigil-host.old.
//
// # Trial and health gate
//
// All files live next to the target binary (same directory, so same file
// system for link and rename, and one directory fsync orders them):
// .vigil-host.update.json holds the trial marker (version on trial, the
// previous version and the path of its kept copy, the deadline, a start
// count), the last result and the versions already rolled back.
// The marker sits next to the binary rather than in state_dir so that
// Startup runs before the config file is read: a new binary that cannot
// even parse the config still rolls back.
//
// Startup, at every start: when the marker names this version, the start
// count goes up; a second start of a trial means the trial binary crashed
// or was restarted before it passed the gate, and the previous binary is
// restored (one rename) and the caller restarts into it. Otherwise the
// caller runs Gate: healthy must hold for Settle before the deadline; then
// the marker is removed and the result "installed" recorded. A failed gate
// restores the previous binary the same way. The previous binary, started
// again, reports "rolled-back" with the reason, and the rolled-back version
// is not tried again until a different version is asked for.
package selfupdate
