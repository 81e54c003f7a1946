// Package control is vigil-host's side of the fleet control plane: it
// registers the host in etcd, follows the host's desired state and reports
// back what it applied. Start runs it; the host's plugin supervisor is the
// Applier (and optionally the TaskRunner).
//
// # One session
//
//  1. Watch the host's desired-state keys — the fleet key, one key per
//     group label (api.GroupScopes order), the host key — created at the
//     current revision with WithRequireLeader; the server reports the
//     revision W each watch starts after.
//  2. Read the same keys in one Txn at revision W (serializable: the member
//     reported W so it has applied it), merge them with api.Merge, call
//     Applier.Apply.
//  3. Register: a Txn that creates api.Keyspace.Agent(host) only if it does
//     not exist (CreateRevision == 0), with a lease of Config.LeaseTTL. The
//     value already carries the applied revision, so registering is one
//     write. A key that exists and carries another agent's identity refuses
//     the host with ErrNameTaken, naming the holder and when its lease
//     expires; the attempt is retried with backoff while the watches stay
//     open and keep being applied. A key carrying this agent's own identity
//     (agent.id under Config.StateDir: the same machine restarted while its
//     old lease lives) is reclaimed at once and the old lease revoked.
//  4. Keep the lease alive; apply each watch event; acknowledge.
//
// A lost lease (the keepalive channel closes, or a write reports the lease
// gone) or a registration key replaced by someone else ends the session:
// the loop starts a new one with capped exponential backoff with full
// jitter seeded by the host name (sdk.Backoff), and at the earliest at the
// host's moment of the Config.Spread window, so a cell whose hosts all lost
// etcd at one instant does not come back in lock step. The first
// registration is spread the same way.
//
// # Level-triggered desired state
//
// A compacted revision, a lost leader or a broken watch stream (its member
// died or was cut off) means a fresh read: new watches, a read at their
// revision, Apply. So does every
// Config.ResyncInterval (default 10 minutes, plus a share by host hash), so
// that a watch that hangs without an error cannot keep a host behind for
// longer. Events at or below a layer's known revision are repeats and are
// dropped; every other event changes one layer and the merge is applied
// again if it changed. Apply is called
// whenever the merged state changed and after every fresh read, so it must
// be idempotent.
//
// Watch layout: a host watches only its own keys, one watch per key, all
// on one gRPC stream of its own (etcd's Watch RPC, opened per watch set,
// so it is the host's own even when vigil-sim shares one client between
// hosts).
// A fleet-wide change reaches N watchers, one event each; a change for one
// host reaches one. A single prefix watch on the config tree would instead
// send every host every other host's changes (N² events), and a watch per
// plugin would multiply the watchers without need. Creating the watches at
// the current revision and reading at the revision they report avoids
// etcd's "unsynced" watchers (a watch from an older revision is caught up
// by scanning history), which dominate a reconnect storm otherwise. For the
// same reason the stream is not clientv3's Watch, which resumes a broken
// stream's watches on another member from the revision each last saw:
// after a member's death that was the surviving members' largest cost.
//
// # Acknowledgement
//
// After each apply the loop rewrites its registration value (with its
// lease, and only if the key is still the one it created): the applied
// revision, the rejection reported by Apply (plus any document that did not
// decode; that scope keeps its last good layer), the stop flag, the
// plugins' status and the last task results. Watch events that arrive
// together are applied and acknowledged once; plugin status is polled every
// Config.StatusInterval and written only when it changed. A failed
// acknowledgement is retried with backoff and keeps the watches.
//
// # Offline
//
// Every state read from etcd that the applier accepted in full is
// persisted atomically (desired.json under Config.StateDir: temporary file,
// fsync, rename, fsync of the directory). A host that cannot reach etcd
// within Config.OfflineGrace of starting applies that state, so its plugins
// run while the control plane is away (Elkeid stops all detection when its
// server is unreachable; Vigil does not), and keeps trying to connect.
//
// # Tasks
//
// One-shot tasks in the desired state run at most once per host: each ID
// is recorded in tasks.json before it runs, at SpreadDelay(host, id,
// spread) after it appeared, through the applier's optional TaskRunner.
// Tasks wait while the host is stopped. Results go into the registration.
package control
