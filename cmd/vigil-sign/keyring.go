package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/vigil-hids/vigil/signing"
)

func (c *cli) keyringCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "keyring", Short: "Create, sign and verify root-signed keyrings of release keys"}
	cmd.AddCommand(c.keyringCreateCmd(), c.keyringSignCmd(), c.keyringVerifyCmd())
	return cmd
}

func (c *cli) keyringCreateCmd() *cobra.Command {
	var threshold int
	var serial uint64
	var expires string
	cmd := &cobra.Command{
		Use:   "create KEYRING RELEASE_PUBKEY_FILE...",
		Short: "Write an unsigned keyring listing release keys",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			tf, err := trustFileFrom(threshold, args[1:])
			if err != nil {
				return err
			}
			exp, err := parseExpiry(expires, c.now())
			if err != nil {
				return err
			}
			kr := signing.SignedKeyring{Keyring: signing.Keyring{Serial: serial, Expires: exp, Threshold: threshold, Keys: tf.Keys}, Signatures: []signing.Signature{}}
			if err := writeKeyring(args[0], kr); err != nil {
				return err
			}
			return c.print(kr.Keyring, fmt.Sprintf("wrote %s: serial %d, %d of %d release keys, expires %s; sign it with the root keys",
				args[0], serial, threshold, len(tf.Keys), exp.Format("2006-01-02T15:04:05Z")))
		},
	}
	cmd.Flags().IntVarP(&threshold, "threshold", "k", 1, "distinct release keys that must sign a release")
	cmd.Flags().Uint64Var(&serial, "serial", 1, "keyring serial, higher than the last one published")
	cmd.Flags().StringVar(&expires, "expires", "8760h", "expiry: a duration from now or an RFC 3339 time")
	return cmd
}

func (c *cli) keyringSignCmd() *cobra.Command {
	var secPath, passwordFile string
	cmd := &cobra.Command{
		Use:   "sign KEYRING",
		Short: "Add a root key's signature to a keyring",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			sec, err := c.secretKey(secPath, passwordFile)
			if err != nil {
				return err
			}
			kr, err := readKeyring(args[0])
			if err != nil {
				return err
			}
			if err := kr.Sign(sec); err != nil {
				return err
			}
			if err := writeKeyring(args[0], kr); err != nil {
				return err
			}
			ids := make([]string, len(kr.Signatures))
			for i, s := range kr.Signatures {
				ids[i] = s.KeyID
			}
			return c.print(map[string]any{"keyring": args[0], "signed_by": ids},
				fmt.Sprintf("signed keyring %s serial %d; signatures: %s", args[0], kr.Keyring.Serial, strings.Join(ids, ",")))
		},
	}
	cmd.Flags().StringVarP(&secPath, "secret-key", "s", "root.key", "root secret key file")
	cmd.Flags().StringVar(&passwordFile, "password-file", "", "read the password from this file instead of prompting")
	return cmd
}

func (c *cli) keyringVerifyCmd() *cobra.Command {
	var rootsPath string
	var minSerial uint64
	cmd := &cobra.Command{
		Use:   "verify KEYRING",
		Short: "Verify a keyring against the root trust file and print its release keys",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			roots, err := readTrust(rootsPath)
			if err != nil {
				return err
			}
			kr, err := readKeyring(args[0])
			if err != nil {
				return err
			}
			release, err := signing.VerifyKeyring(kr, roots, c.now(), minSerial)
			if err != nil {
				return err
			}
			ids := release.KeyIDs()
			return c.print(map[string]any{"keyring": args[0], "serial": kr.Keyring.Serial, "expires": kr.Keyring.Expires, "threshold": release.Threshold, "release_keys": ids},
				fmt.Sprintf("ok: keyring serial %d, release keys %s (threshold %d)", kr.Keyring.Serial, strings.Join(ids, ","), release.Threshold))
		},
	}
	cmd.Flags().StringVar(&rootsPath, "roots", "roots.json", "trust file of root keys")
	cmd.Flags().Uint64Var(&minSerial, "min-serial", 0, "refuse a keyring with a lower serial (the highest accepted before)")
	return cmd
}

func writeKeyring(path string, kr signing.SignedKeyring) error {
	b, err := jsonIndent(kr)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("writing keyring: %w", err)
	}
	return nil
}

func jsonIndent(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding: %w", err)
	}
	return append(b, '\n'), nil
}
