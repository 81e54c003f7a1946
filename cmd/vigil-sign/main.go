// Command vigil-sign makes minisign keys, signs release bundles (one more
// key at a time), verifies them against a k-of-n trust file or a
// root-signed keyring, and manages keyrings. See docs/signing.md.
package main

import (
	"os"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], env{in: os.Stdin, out: os.Stdout, errOut: os.Stderr, now: time.Now, readPassword: ttyPassword}))
}
