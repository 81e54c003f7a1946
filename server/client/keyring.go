package client

import (
	"bytes"
	"context"
	"fmt"
	"os"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/signing"
)

// PublishKeyring uploads a signed keyring.json (vigil-sign keyring create,
// then sign) as the fleet's release keyring. The file is sent byte for
// byte: hosts verify the root signatures over it.
func (c *Client) PublishKeyring(ctx context.Context, path string) (api.KeyringInfo, error) {
	var out api.KeyringInfo
	raw, err := os.ReadFile(path)
	if err != nil {
		return out, fmt.Errorf("reading the keyring: %w", err)
	}
	// Refuse locally what the server would refuse as malformed.
	if _, err := signing.ParseKeyring(bytes.NewReader(raw)); err != nil {
		return out, fmt.Errorf("keyring %s: %w", path, err)
	}
	return out, c.do(ctx, "PUT", "/v1/keyring", nil, raw, &out)
}

// Keyring returns the published release keyring.
func (c *Client) Keyring(ctx context.Context) (api.KeyringInfo, error) {
	var out api.KeyringInfo
	return out, c.do(ctx, "GET", "/v1/keyring", nil, nil, &out)
}

// KeyringHistory lists the records of every published keyring serial.
func (c *Client) KeyringHistory(ctx context.Context) ([]api.KeyringRecord, error) {
	var out httpapi.KeyringHistory
	return out.Records, c.do(ctx, "GET", "/v1/keyring/history", nil, nil, &out)
}
