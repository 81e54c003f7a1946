package signing

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"aead.dev/minisign"
)

// Signature is one key's detached signature over a canonical body. The
// signature text is a complete minisign signature file (prehashed, "ED"),
// so `minisign -V` checks it against the body bytes.
type Signature struct {
	KeyID     string `json:"key_id"`
	Signature string `json:"signature"`
}

// signBytes makes a prehashed minisign signature of msg.
func signBytes(sec minisign.PrivateKey, msg []byte, trustedComment string) string {
	r := minisign.NewReader(bytes.NewReader(msg))
	_, _ = io.Copy(io.Discard, r) // reading a bytes.Reader cannot fail
	untrusted := "signature from vigil-sign secret key " + KeyID(sec.ID())
	return string(r.SignWithComments(sec, trustedComment, untrusted))
}

// addSignature signs body with sec and returns sigs with the new signature,
// replacing an older one by the same key so re-signing never counts twice.
func addSignature(sigs []Signature, sec minisign.PrivateKey, body []byte, trustedComment string) []Signature {
	id := KeyID(sec.ID())
	out := make([]Signature, 0, len(sigs)+1)
	for _, s := range sigs {
		if s.KeyID != id {
			out = append(out, s)
		}
	}
	return append(out, Signature{KeyID: id, Signature: signBytes(sec, body, trustedComment)})
}

// countSigners checks sigs over body against trust and returns the number
// of distinct trusted keys with a valid signature. A signature that names a
// trusted key but does not verify is refused outright (ErrBadSignature);
// signatures by unknown keys are not counted.
func countSigners(body []byte, sigs []Signature, trust Trust) (int, error) {
	if len(sigs) == 0 {
		return 0, ErrNoSignature
	}
	valid := map[uint64]bool{}
	var unknown []string
	for i, s := range sigs {
		var ms minisign.Signature
		if err := ms.UnmarshalText([]byte(s.Signature)); err != nil {
			return 0, fmt.Errorf("signatures[%d]: %w: %v", i, ErrBadSignature, err)
		}
		if KeyID(ms.KeyID) != s.KeyID {
			return 0, fmt.Errorf("signatures[%d]: %w: entry says key %s but the signature names %s", i, ErrBadSignature, s.KeyID, KeyID(ms.KeyID))
		}
		pub, ok := trust.keys[ms.KeyID]
		if !ok {
			unknown = append(unknown, s.KeyID)
			continue
		}
		if !minisign.Verify(pub, body, []byte(s.Signature)) {
			return 0, fmt.Errorf("signatures[%d] by key %s: %w", i, s.KeyID, ErrBadSignature)
		}
		valid[ms.KeyID] = true
	}
	if len(valid) < trust.Threshold {
		detail := ""
		if len(unknown) > 0 {
			detail = "; ignored signatures by untrusted keys " + strings.Join(unknown, ",")
		}
		return len(valid), fmt.Errorf("%w: %d of %d required%s", ErrThreshold, len(valid), trust.Threshold, detail)
	}
	return len(valid), nil
}
