package api

import (
	"crypto/sha256"
	"encoding/binary"
	"time"
)

// HostReleaseName is the release name under which vigil-host's own binary
// is published (/hids/releases/vigil-host/{version}/{os}/{arch}); the host's desired
// version is DesiredState.HostVersion.
const HostReleaseName = "vigil-host"

// Rollout limits a desired version to a share of the hosts in its scope.
// A host takes the new version when RolloutBucket(host, release) <
// Percent; the others run From (or, when From is empty, keep what they
// run). The bucket is a stable hash, so raising Percent only adds hosts and
// a canary keeps the same machines from one step to the next.
type Rollout struct {
	// Percent is 1..100.
	Percent int `json:"percent"`
	// From is the version hosts outside the percentage run.
	From string `json:"from,omitempty"`
}

// RolloutBucket is host's stable bucket (0..99) for release name.
func RolloutBucket(host, release string) int {
	h := sha256.Sum256([]byte(release + "\x00" + host))
	return int(binary.BigEndian.Uint64(h[:8]) % 100)
}

// TargetVersion is the version host should run for a desired version and
// an optional rollout; "" means no version is asked for (keep the one
// installed).
func TargetVersion(host, release, version string, r *Rollout) string {
	if version == "" || r == nil || r.Percent >= 100 {
		return version
	}
	if RolloutBucket(host, release) < r.Percent {
		return version
	}
	return r.From
}

// Update states, as UpdateStatus.State reports them.
const (
	UpdateDownloading = "downloading"
	UpdateVerifying   = "verifying"
	UpdateHealthCheck = "health-check"
	UpdateInstalled   = "installed"
	UpdateRefused     = "refused"
	UpdateFailed      = "failed"
	UpdateRolledBack  = "rolled-back"
)

// UpdateStatus is how far a host is in installing one release, as it
// reports it in its registration value.
type UpdateStatus struct {
	// Target is the version being (or last) installed.
	Target string `json:"target"`
	// Running is the version running now.
	Running string `json:"running,omitempty"`
	// State is one of the Update* constants.
	State string `json:"state"`
	// Error says why the release was refused, failed or rolled back.
	Error string    `json:"error,omitempty"`
	At    time.Time `json:"at"`
}
