package selfupdate

import (
	"fmt"
	"os"
	"syscall"
)

// ExitRestart is the exit status with which vigil-host asks its service
// manager to start it again, into the binary now at the target path. The
// shipped systemd unit lists it in RestartForceExitStatus, so the restart
// happens whatever Restart= says.
const ExitRestart = 75

// UnderSystemd reports whether the process runs as a systemd service
// (systemd sets INVOCATION_ID for every unit it starts).
func UnderSystemd() bool { return os.Getenv("INVOCATION_ID") != "" }

// Exec replaces the running process with target, keeping the arguments,
// the environment and the PID (for a host not run by systemd). The caller
// must have stopped its plugins first: they are children and would
// otherwise be orphaned across the exec.
func Exec(target string) error {
	argv := append([]string{target}, os.Args[1:]...)
	if err := syscall.Exec(target, argv, os.Environ()); err != nil {
		return fmt.Errorf("selfupdate: exec %s: %w", target, err)
	}
	return nil // not reached
}
