package api

import (
	"encoding/json"
	"time"
)

// KeyringStatus is what a host reports of its release keyring (pinned root
// keys and a root-signed keyring listing the release keys). A host with
// pinned release keys, or no update section, reports none.
type KeyringStatus struct {
	// Serial and Expires are those of the keyring the host verifies
	// releases with now.
	Serial  uint64    `json:"serial"`
	Expires time.Time `json:"expires"`
	// Refused is the serial of the newest published keyring the host
	// refused, and Error why; both empty when the host took the newest.
	Refused uint64 `json:"refused,omitempty"`
	Error   string `json:"error,omitempty"`
}

// KeyringRecord is the value of a KeyringHistory key: one published
// keyring, who published it and when.
type KeyringRecord struct {
	Serial      uint64    `json:"serial"`
	PublishedBy string    `json:"published_by"`
	PublishedAt time.Time `json:"published_at"`
	// UpdatedBy and UpdatedAt name the last write of the same serial with
	// root signatures added (PublishedBy stays the first publisher); empty
	// if there was none.
	UpdatedBy string    `json:"updated_by,omitempty"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	// Signed is the keyring.json as published (the same JSON value,
	// compacted; the Keyring key holds it byte for byte).
	Signed json.RawMessage `json:"signed"`
	// Key and Error are set only in a listing (GET /v1/keyring/history),
	// never stored: on the entry of a record that could not be decoded,
	// its etcd key and the decode error (Serial is the one the key names,
	// 0 if it names none; the other fields are empty).
	Key   string `json:"key,omitempty"`
	Error string `json:"error,omitempty"`
}

// KeyringInfo is the server's answer about the published keyring
// (GET and PUT /v1/keyring).
type KeyringInfo struct {
	Serial    uint64    `json:"serial"`
	Expires   time.Time `json:"expires"`
	Threshold int       `json:"threshold"`
	// KeyIDs are the listed release keys' minisign key ids (hex).
	KeyIDs []string `json:"key_ids"`
	// RootSigners are the key ids of the root signatures it carries.
	RootSigners []string `json:"root_signers"`
	// Revision is the etcd revision of the Keyring key.
	Revision    int64     `json:"revision"`
	PublishedBy string    `json:"published_by,omitempty"`
	PublishedAt time.Time `json:"published_at,omitzero"`
	// UpdatedBy and UpdatedAt: the record's last addition of signatures.
	UpdatedBy string    `json:"updated_by,omitempty"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	// Result of a PUT: "created", "updated" or "unchanged".
	Result string `json:"result,omitempty"`
	// Signed is the keyring.json as published (the same JSON value,
	// compacted; the Keyring key holds it byte for byte).
	Signed json.RawMessage `json:"signed"`
}
