package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/host/agent"
	"github.com/vigil-hids/vigil/host/config"
	"github.com/vigil-hids/vigil/host/selfupdate"
	"github.com/vigil-hids/vigil/host/update"
	"github.com/vigil-hids/vigil/internal/version"
	"github.com/vigil-hids/vigil/signing"
)

// faultInjection, set only with -ldflags "-X main.faultInjection=...", makes
// a test build misbehave for the rollback tests: crash-at-start exits right
// after the self-update start check; unhealthy never passes the health
// gate. Release builds leave it empty.
var faultInjection string

// selfUpdateFlags are run's self-update flags.
type selfUpdateFlags struct {
	target      string
	restartMode string
	window      time.Duration
	settle      time.Duration
}

func (f *selfUpdateFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.target, "binary", "", "installed vigil-host binary that self-update replaces (default: this executable)")
	cmd.Flags().StringVar(&f.restartMode, "restart", "auto", "how to restart into a new binary: exit (status 75, for systemd), exec (replace the process), auto (exit under systemd, else exec)")
	cmd.Flags().DurationVar(&f.window, "selfupdate-window", selfupdate.DefaultWindow, "a new vigil-host must pass its health gate within this window of its first start")
	cmd.Flags().DurationVar(&f.settle, "selfupdate-settle", selfupdate.DefaultSettle, "how long a new vigil-host must stay healthy to pass")
}

// bootState is what the start check found.
type bootState struct {
	trial *selfupdate.Trial
	last  *api.UpdateStatus
}

func (f *selfUpdateFlags) updater(log *slog.Logger, keys func(time.Time) (signing.Trust, error)) (*selfupdate.Updater, error) {
	return selfupdate.New(selfupdate.Config{Target: f.target, Running: version.Version, Window: f.window, Settle: f.settle,
		ReleaseKeys: keys, Log: log})
}

// startup resolves the binary path and runs the self-update start check.
// A rollback restarts into the restored binary at once.
func (f *selfUpdateFlags) startup() (*bootState, error) {
	switch f.restartMode {
	case "auto", "exit", "exec":
	default:
		return nil, fmt.Errorf("--restart must be auto, exit or exec (got %q)", f.restartMode)
	}
	p, err := binaryPath(f.target)
	if err != nil {
		return nil, err
	}
	f.target = p
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	u, err := f.updater(log, nil)
	if err != nil {
		return nil, err
	}
	out, err := u.Startup()
	if err != nil {
		// The host must run even if the update state is damaged; the
		// error is reported and self-update stays off for this run.
		log.Error("self-update start check failed; self-update is off for this run", "error", err)
		return nil, nil
	}
	if out.RolledBack {
		log.Error("restarting into the previous vigil-host", "binary", f.target, "reason", out.Last.Error)
		return nil, f.restart()
	}
	if faultInjection == "crash-at-start" {
		fmt.Fprintln(os.Stderr, "vigil-host: fault injection: crash at start")
		os.Exit(3)
	}
	return &bootState{trial: out.Trial, last: out.Last}, nil
}

// agentSelfUpdate builds the agent's self-update from the update and
// server sections; nil (self-update off) without them. A trial without
// them still runs its health gate.
func (f *selfUpdateFlags) agentSelfUpdate(cfg config.Config, boot *bootState, log *slog.Logger) (*agent.SelfUpdate, error) {
	if boot == nil {
		return nil, nil
	}
	tr := update.NewTrustStore(update.Trust{}, "", log)
	var spread time.Duration
	us := cfg.UpdateSettings()
	if us != nil {
		t, err := update.LoadTrust(us.TrustFile, us.RootsFile, us.KeyringFile)
		if err != nil {
			return nil, err
		}
		tr = update.NewTrustStore(t, cfg.StateDir, log)
		spread = us.SpreadWindow
	} else if boot.trial == nil {
		return nil, nil
	}
	keys := func(now time.Time) (signing.Trust, error) { return tr.Release(now, 0) }
	u, err := f.updater(log, keys)
	if err != nil {
		return nil, err
	}
	su := &agent.SelfUpdate{Updater: u, Trust: tr, Trial: boot.trial, Last: boot.last, SpreadWindow: spread}
	if faultInjection == "unhealthy" {
		su.Health = func() error { return errors.New("fault injection: this build never becomes healthy") }
	}
	return su, nil
}

// restart starts the binary now at the target path: exit with
// selfupdate.ExitRestart for systemd (the unit restarts on it), or exec.
func (f *selfUpdateFlags) restart() error {
	if f.restartMode == "exit" || (f.restartMode == "auto" && selfupdate.UnderSystemd()) {
		os.Exit(selfupdate.ExitRestart)
	}
	return selfupdate.Exec(f.target)
}

func selfUpdateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "selfupdate",
		Short: "Inspect or drive vigil-host's own binary updates",
	}
	var target string
	resolve := func(trust signing.Trust) (*selfupdate.Updater, error) {
		p, err := binaryPath(target)
		if err != nil {
			return nil, err
		}
		return selfupdate.New(selfupdate.Config{Target: p, Running: version.Version, Trust: trust,
			Log: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	}
	cmd.PersistentFlags().StringVar(&target, "binary", "", "installed vigil-host binary (default: this executable)")

	status := &cobra.Command{
		Use:   "status",
		Short: "Print the self-update state: trial marker, last result, versions rolled back",
		RunE: func(*cobra.Command, []string) error {
			u, err := resolve(signing.Trust{})
			if err != nil {
				return err
			}
			st, err := u.State()
			if err != nil {
				return err
			}
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(map[string]any{"binary": u.Target(), "running": version.Version,
				"state_file": u.StatePath(), "previous": u.PreviousPath(), "state": st})
		},
	}

	var trustFile string
	install := &cobra.Command{
		Use:   "install BUNDLE",
		Short: "Verify a signed vigil-host bundle and install it over the binary (restart vigil-host to start its trial)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if trustFile == "" {
				return errors.New("--trust is required")
			}
			tf, err := os.Open(trustFile)
			if err != nil {
				return err
			}
			trust, err := signing.ParseTrust(tf)
			tf.Close()
			if err != nil {
				return fmt.Errorf("--trust %s: %w", trustFile, err)
			}
			u, err := resolve(trust)
			if err != nil {
				return err
			}
			rel, err := selfupdate.BundleRelease(args[0])
			if err != nil {
				return err
			}
			t, err := u.Install(rel)
			if err != nil {
				return err
			}
			fmt.Printf("installed vigil-host %s over %s (previous %s kept at %s); restart vigil-host to start its trial\n",
				t.Version, t.Previous, t.Previous, t.PreviousPath)
			return nil
		},
	}
	install.Flags().StringVar(&trustFile, "trust", "", "trust file of release keys (vigil-sign trust)")
	cmd.AddCommand(status, install)
	return cmd
}

// binaryPath resolves the installed binary: the flag, or this executable,
// symlinks followed, absolute.
func binaryPath(flag string) (string, error) {
	p := flag
	if p == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("finding this executable: %w", err)
		}
		p = exe
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	return filepath.Abs(p)
}
