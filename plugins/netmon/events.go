package netmon

import "github.com/vigil-hids/vigil/sdk"

// Stable rule ids of netmon's detections; they are the Type of the alert
// events and never change meaning.
const (
	// RuleListenerUnexpected: a new listener by an executable or on a port
	// outside the learned baseline.
	RuleListenerUnexpected = "netmon.listener_unexpected"
	// RuleOutboundBlocklisted: an outbound connection to a blocklisted
	// network.
	RuleOutboundBlocklisted = "netmon.outbound_blocklisted"
	// RuleShellSocket: a shell process holds a TCP or UDP socket (a reverse
	// or bind shell).
	RuleShellSocket = "netmon.shell_socket"
)

// Severities of the rules.
const (
	SevListenerUnexpected  = sdk.SevWarning
	SevOutboundBlocklisted = sdk.SevCritical
	SevShellSocket         = sdk.SevCritical
)

// Telemetry event types.
const (
	TypeListenerNew    = "listener_new"
	TypeListenerClosed = "listener_closed"
	TypeConnectionNew  = "connection_new"
	TypeStatus         = "netmon_status"
)

// Counter names reported with every batch.
const (
	CounterSnapshots          = "snapshots_total"
	CounterTruncated          = "snapshots_truncated"
	CounterSlowed             = "snapshots_slowed"
	CounterSockets            = "sockets_last"
	CounterSnapshotCPU        = "snapshot_cpu_us_last"
	CounterAttributionMisses  = "attribution_misses"
	CounterAttributionScans   = "attribution_scans"
	CounterAttributionFDs     = "attribution_fds_read"
	CounterAttributionDefer   = "attribution_deferred"
	CounterEventsSuppressed   = "events_suppressed"
	CounterOutboundUnreported = "outbound_unreported"
	CounterDumpInterrupted    = "dump_interrupted"
	CounterDumpErrors         = "dump_errors"
	CounterProcNetFallback    = "procnet_fallback_snapshots"
	// Network namespaces (all_namespaces): known in the last snapshot
	// (the plugin's own included), dumped completely (others than the
	// plugin's own, cumulative), not reached because the snapshot's budget
	// was spent, and failures (a socket that could not be created in one,
	// a dump that failed).
	CounterNetNS        = "netns_last"
	CounterNetNSDumped  = "netns_dumped"
	CounterNetNSSkipped = "netns_skipped"
	CounterNetNSErrors  = "netns_errors"
)
