package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/signing"
)

func (c *cli) keygenCmd() *cobra.Command {
	var pubPath, secPath, passwordFile string
	var noPassword, force bool
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Make a minisign key pair (secret key scrypt-encrypted unless -W)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if !force {
				for _, p := range []string{pubPath, secPath} {
					if _, err := os.Stat(p); err == nil {
						return fmt.Errorf("%s exists; pass --force to overwrite a key", p)
					}
				}
			}
			pw := ""
			if !noPassword {
				var err error
				if pw, err = c.password(passwordFile, "Password for the new secret key: "); err != nil {
					return err
				}
				if pw == "" {
					return fmt.Errorf("empty password: pass -W for an unencrypted key")
				}
			}
			pub, sec, err := signing.GenerateKey(nil)
			if err != nil {
				return err
			}
			secText, err := signing.MarshalSecretKey(sec, pw)
			if err != nil {
				return err
			}
			if err := os.WriteFile(secPath, secText, 0o600); err != nil {
				return fmt.Errorf("writing secret key: %w", err)
			}
			if err := os.WriteFile(pubPath, signing.MarshalPublicKey(pub), 0o644); err != nil {
				return fmt.Errorf("writing public key: %w", err)
			}
			id := signing.KeyID(pub.ID())
			return c.print(map[string]any{"key_id": id, "public_key": pub.String(), "public_key_file": pubPath, "secret_key_file": secPath, "encrypted": pw != ""},
				fmt.Sprintf("key %s\npublic key %s (%s)\nsecret key %s", id, pubPath, pub.String(), secPath))
		},
	}
	f := cmd.Flags()
	f.StringVarP(&pubPath, "public-key", "p", "vigil.pub", "public key file to write")
	f.StringVarP(&secPath, "secret-key", "s", "vigil.key", "secret key file to write (mode 0600)")
	f.StringVar(&passwordFile, "password-file", "", "read the password from this file instead of prompting")
	f.BoolVarP(&noPassword, "no-password", "W", false, "leave the secret key unencrypted")
	f.BoolVar(&force, "force", false, "overwrite existing key files")
	return cmd
}

func (c *cli) signCmd() *cobra.Command {
	var secPath, passwordFile, binary, expires string
	var m signing.Manifest
	cmd := &cobra.Command{
		Use:   "sign BUNDLE",
		Short: "Sign a bundle; with --binary create it first, otherwise add this key's signature",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			dir := args[0]
			sec, err := c.secretKey(secPath, passwordFile)
			if err != nil {
				return err
			}
			if binary != "" {
				if _, err := os.Stat(filepath.Join(dir, signing.BundleManifest)); err == nil {
					return fmt.Errorf("bundle %s exists; sign it without --binary to add a signature", dir)
				}
				if m.Expires, err = parseExpiry(expires, c.now()); err != nil {
					return err
				}
				if _, err := signing.CreateBundle(dir, binary, m); err != nil {
					return fmt.Errorf("creating bundle: %w", err)
				}
			}
			s, err := signing.SignBundle(dir, sec)
			if err != nil {
				return fmt.Errorf("signing bundle %s: %w", dir, err)
			}
			ids := make([]string, len(s.Signatures))
			for i, sg := range s.Signatures {
				ids[i] = sg.KeyID
			}
			return c.print(map[string]any{"bundle": dir, "manifest": s.Manifest, "signed_by": ids},
				fmt.Sprintf("signed %s %s %s/%s with key %s; signatures: %s",
					s.Manifest.Plugin, s.Manifest.Version, s.Manifest.OS, s.Manifest.Arch, signing.KeyID(sec.ID()), strings.Join(ids, ",")))
		},
	}
	f := cmd.Flags()
	f.StringVarP(&secPath, "secret-key", "s", "vigil.key", "secret key file")
	f.StringVar(&passwordFile, "password-file", "", "read the password from this file instead of prompting")
	f.StringVar(&binary, "binary", "", "create the bundle from this binary (then --plugin and --version are required)")
	f.StringVar(&m.Plugin, "plugin", "", "plugin name")
	f.StringVar(&m.Version, "version", "", "release version (semver)")
	f.StringVar(&m.OS, "os", runtime.GOOS, "target os")
	f.StringVar(&m.Arch, "arch", runtime.GOARCH, "target arch")
	f.StringVar(&m.MinHostVersion, "min-host-version", "0.0.0", "minimum vigil-host version (semver)")
	f.StringVar(&expires, "expires", "720h", "expiry: a duration from now or an RFC 3339 time")
	f.BoolVar(&m.Rollback, "rollback", false, "sign a rollback: allow installing over a newer running version")
	return cmd
}

func (c *cli) verifyCmd() *cobra.Command {
	var trustPath, keyringPath, rootsPath string
	var want signing.Expect
	cmd := &cobra.Command{
		Use:   "verify BUNDLE",
		Short: "Verify a bundle against a trust file, or a keyring and its root trust file",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			want.Now = c.now()
			var trust signing.Trust
			var err error
			switch {
			case trustPath != "" && keyringPath == "":
				trust, err = readTrust(trustPath)
			case keyringPath != "" && rootsPath != "" && trustPath == "":
				var roots signing.Trust
				if roots, err = readTrust(rootsPath); err != nil {
					return err
				}
				var kr signing.SignedKeyring
				if kr, err = readKeyring(keyringPath); err != nil {
					return err
				}
				trust, err = signing.VerifyKeyring(kr, roots, want.Now, want.MinKeyringSerial)
			default:
				return fmt.Errorf("pass either --trust, or --keyring with --roots")
			}
			if err != nil {
				return err
			}
			v, err := signing.VerifyBundle(args[0], trust, want)
			if err != nil {
				return err
			}
			m := v.Manifest
			return c.print(map[string]any{"bundle": args[0], "manifest": m, "signers": v.Signers, "threshold": trust.Threshold},
				fmt.Sprintf("ok: %s %s %s/%s sha256 %s, %d distinct trusted keys (threshold %d), expires %s",
					m.Plugin, m.Version, m.OS, m.Arch, m.SHA256, v.Signers, trust.Threshold, m.Expires.UTC().Format("2006-01-02T15:04:05Z")))
		},
	}
	f := cmd.Flags()
	f.StringVar(&trustPath, "trust", "", "trust file (JSON: threshold and minisign public keys)")
	f.StringVar(&keyringPath, "keyring", "", "signed keyring listing the release keys")
	f.StringVar(&rootsPath, "roots", "", "trust file of root keys that sign the keyring")
	f.StringVar(&want.Plugin, "plugin", "", "refuse a manifest for another plugin")
	f.StringVar(&want.OS, "os", "", "refuse a manifest for another os")
	f.StringVar(&want.Arch, "arch", "", "refuse a manifest for another arch")
	f.StringVar(&want.Running, "running", "", "running version: refuse a lower one unless the manifest carries a signed rollback")
	f.StringVar(&want.HostVersion, "host-version", "", "host version: refuse a release that needs a newer host")
	f.Uint64Var(&want.MinKeyringSerial, "min-keyring-serial", 0, "with --keyring: refuse a keyring with a lower serial")
	return cmd
}

func (c *cli) trustCmd() *cobra.Command {
	var threshold int
	var out string
	cmd := &cobra.Command{
		Use:   "trust PUBKEY_FILE...",
		Short: "Write a trust file from public key files and a threshold",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			tf, err := trustFileFrom(threshold, args)
			if err != nil {
				return err
			}
			b, err := jsonIndent(tf)
			if err != nil {
				return err
			}
			if err := os.WriteFile(out, b, 0o644); err != nil {
				return fmt.Errorf("writing trust file: %w", err)
			}
			return c.print(tf, fmt.Sprintf("wrote %s: %d of %d keys", out, threshold, len(tf.Keys)))
		},
	}
	cmd.Flags().IntVarP(&threshold, "threshold", "k", 1, "distinct keys that must sign")
	cmd.Flags().StringVar(&out, "out", "trust.json", "trust file to write")
	return cmd
}

// trustFileFrom reads public key files into a validated trust file.
func trustFileFrom(threshold int, pubFiles []string) (signing.TrustFile, error) {
	tf := signing.TrustFile{Threshold: threshold}
	for _, p := range pubFiles {
		b, err := os.ReadFile(p)
		if err != nil {
			return tf, fmt.Errorf("reading public key: %w", err)
		}
		pub, err := signing.ParsePublicKey(b)
		if err != nil {
			return tf, fmt.Errorf("%s: %w", p, err)
		}
		tf.Keys = append(tf.Keys, pub.String())
	}
	if _, err := tf.Trust(); err != nil {
		return tf, err
	}
	return tf, nil
}
