// Package control is vigil-host's side of the fleet control plane: it
// registers the host in etcd, follows the host's desired state and reports
// back what it applied.
//
// # Registration
//
// The host's key is api.Keyspace.Agent(host). It is created in a Txn that
// succeeds only if the key does not exist (CreateRevision == 0), with a
// lease of Config.LeaseTTL kept alive by the client. A key that exists and
// carries another agent's identity refuses the host with ErrNameTaken,
// naming the holder, and the loop retries with backoff until the holder's
// lease expires. A key carrying this agent's own identity (agent.id under
// Config.StateDir, i.e. the same machine restarted while its old lease
// lives) is reclaimed at once. A lost lease (the keepalive channel closes,
// or a write reports the lease gone) ends the session; the loop grants a
// new lease and registers again. Reconnects use capped exponential backoff
// with jitter seeded by the host name (sdk.Backoff), so a fleet that lost
// etcd at one instant does not come back in lock step.
//
// # Desired state
//
// Level-triggered: on every (re)connect the loop reads the fleet, group
// (api.GroupScopes order) and host documents in one Txn, at one revision,
// merges them with api.Merge and calls Applier.Apply, then watches the same
// keys from that revision + 1 with WithRequireLeader. Each watch event
// updates one layer and the merge is applied again; a compacted revision,
// a lost leader or a closed watch means a fresh read. Apply is called
// whenever the merged state changed and after every fresh read, so it must
// be idempotent.
//
// Watch layout: a host watches only its own keys — the fleet key, one key
// per group label, its host key — each as its own watch, all multiplexed
// by the client on one gRPC stream. A fleet-wide change reaches N watchers
// (one event each); a change for one host reaches one. A single prefix
// watch on the config tree would instead send every host every other
// host's changes (N² events), and a watch per plugin would multiply the
// watcher count without need.
//
// # Acknowledgement
//
// After each apply the loop rewrites its registration value (with its
// lease, and only if the key is still the one it created): the applied
// revision, the rejection reported by Apply (plus any document that did not
// decode), the stop flag, the plugins' status and the last task results.
// Watch events that arrive together are applied and acknowledged once;
// plugin status is polled every Config.StatusInterval and written only when
// it changed.
//
// # Offline
//
// Every state the applier accepted in full is persisted atomically
// (desired.json under Config.StateDir). A host that cannot reach etcd
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
