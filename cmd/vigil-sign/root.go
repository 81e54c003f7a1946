package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"aead.dev/minisign"
	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/internal/version"
	"github.com/vigil-hids/vigil/signing"
)

// env is everything the commands touch outside their flags, so tests run
// them in-process with their own streams, clock and password source.
type env struct {
	in           io.Reader
	out, errOut  io.Writer
	now          func() time.Time
	readPassword func(prompt string) (string, error)
}

// run executes one command line and returns the exit status.
func run(args []string, e env) int {
	root := newRoot(e)
	root.SetArgs(args)
	root.SetIn(e.in)
	root.SetOut(e.out)
	root.SetErr(e.errOut)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(e.errOut, "vigil-sign:", err)
		return 1
	}
	return 0
}

func newRoot(e env) *cobra.Command {
	var output string
	root := &cobra.Command{
		Use:           "vigil-sign",
		Short:         "Sign and verify Vigil releases with minisign keys",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o must be text or json (got %q)", output)
			}
			return nil
		},
	}
	root.PersistentFlags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	c := &cli{env: e, output: &output}
	root.AddCommand(c.keygenCmd(), c.signCmd(), c.verifyCmd(), c.trustCmd(), c.keyringCmd(), c.exportCmd())
	return root
}

type cli struct {
	env
	output *string
}

// print writes v as JSON with -o json, or text otherwise.
func (c *cli) print(v any, text string) error {
	if *c.output == "json" {
		enc := json.NewEncoder(c.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	_, err := fmt.Fprintln(c.out, text)
	return err
}

// password returns the secret key password from file, or prompts.
func (c *cli) password(file, prompt string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("reading password file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	return c.readPassword(prompt)
}

// secretKey reads and, when needed, decrypts a secret key file.
func (c *cli) secretKey(path, passwordFile string) (minisign.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return minisign.PrivateKey{}, fmt.Errorf("reading secret key: %w", err)
	}
	pw := ""
	if signing.SecretKeyEncrypted(data) {
		if pw, err = c.password(passwordFile, "Password for "+path+": "); err != nil {
			return minisign.PrivateKey{}, err
		}
	}
	sec, err := signing.ParseSecretKey(data, pw)
	return sec, err
}

func readTrust(path string) (signing.Trust, error) {
	f, err := os.Open(path)
	if err != nil {
		return signing.Trust{}, fmt.Errorf("opening trust file: %w", err)
	}
	defer f.Close()
	t, err := signing.ParseTrust(f)
	if err != nil {
		return t, fmt.Errorf("trust file %s: %w", path, err)
	}
	return t, nil
}

func readKeyring(path string) (signing.SignedKeyring, error) {
	f, err := os.Open(path)
	if err != nil {
		return signing.SignedKeyring{}, fmt.Errorf("opening keyring: %w", err)
	}
	defer f.Close()
	return signing.ParseKeyring(f)
}

// parseExpiry accepts a duration from now (720h) or an RFC 3339 time.
func parseExpiry(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("--expires must be a positive duration or a future RFC 3339 time (got %q)", s)
		}
		return now.Add(d).UTC().Truncate(time.Second), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--expires must be a duration like 720h or an RFC 3339 time (got %q)", s)
	}
	if !t.After(now) {
		return time.Time{}, fmt.Errorf("--expires must be in the future (got %q)", s)
	}
	return t.UTC(), nil
}
