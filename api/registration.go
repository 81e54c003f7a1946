package api

import (
	"fmt"
	"time"
)

// Instance identifies one running agent.
type Instance struct {
	// ID is the machine's agent identity, kept in the host's state
	// directory; it survives restarts of the agent and of the machine.
	ID string `json:"id"`
	// BootID is the kernel's boot id (/proc/sys/kernel/random/boot_id).
	BootID string `json:"boot_id,omitempty"`
	PID    int    `json:"pid,omitempty"`
}

// String describes the instance for an operator.
func (i Instance) String() string {
	id := i.ID
	if len(id) > 12 {
		id = id[:12]
	}
	boot := i.BootID
	if len(boot) > 8 {
		boot = boot[:8]
	}
	return fmt.Sprintf("instance %s (pid %d, boot %s)", id, i.PID, boot)
}

// TaskResult reports one one-shot task run by a host.
type TaskResult struct {
	ID    string    `json:"id"`
	At    time.Time `json:"at"`
	Error string    `json:"error,omitempty"`
}
