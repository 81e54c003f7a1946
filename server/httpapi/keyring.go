package httpapi

import (
	"errors"
	"io"
	"net/http"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/auth"
	"github.com/vigil-hids/vigil/server/rollout"
	"github.com/vigil-hids/vigil/signing"
)

// KeyringOptions configures the release keyring routes.
type KeyringOptions struct {
	Keyrings *rollout.Keyrings
}

// maxKeyring bounds PUT /v1/keyring (signing reads at most 1 MiB).
const maxKeyring = 1 << 20

// KeyringHistory is the body of GET /v1/keyring/history.
type KeyringHistory struct {
	// Records are the published serials' records, by serial; a record
	// that could not be decoded is an entry with only Serial (from its
	// key), Key and Error.
	Records []api.KeyringRecord `json:"records"`
}

// keyringRoutes registers the keyring routes when opts.Keyring is set.
// Publishing is the release publishers' action (admins); reading is what
// reading releases is.
func (h *handler) keyringRoutes() {
	if h.opts.Keyring == nil {
		return
	}
	h.mux.HandleFunc("PUT /v1/keyring", h.keyringPublish)
	h.mux.HandleFunc("GET /v1/keyring", h.keyringGet)
	h.mux.HandleFunc("GET /v1/keyring/history", h.keyringHistory)
}

// failKeyring maps the keyring refusals to codes, then defers to fail.
func (h *handler) failKeyring(w http.ResponseWriter, r *http.Request, err error) {
	var mbe *http.MaxBytesError
	code, status := "", 0
	switch {
	case errors.As(err, &mbe):
		code, status = "too_large", http.StatusRequestEntityTooLarge
	case errors.Is(err, rollout.ErrKeyringInvalid), errors.Is(err, signing.ErrKeyringUnsigned),
		errors.Is(err, signing.ErrKeyringExpired), isSigning(err):
		code, status = "invalid", http.StatusBadRequest
	case errors.Is(err, rollout.ErrKeyringSerial):
		code, status = "conflict", http.StatusConflict
	case errors.Is(err, rollout.ErrNoKeyring):
		code, status = "not_found", http.StatusNotFound
	default:
		h.fail(w, r, err)
		return
	}
	h.refuse(w, r, status, code, err)
}

// keyringPublish reads a signed keyring.json (vigil-sign keyring create,
// then sign) and publishes it byte for byte.
func (h *handler) keyringPublish(w http.ResponseWriter, r *http.Request) {
	id, err := h.allowRelease(r, auth.Publish, h.opts.Store.Keyspace().Keyring())
	if err != nil {
		h.failKeyring(w, r, err)
		return
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxKeyring))
	if err != nil {
		h.failKeyring(w, r, err)
		return
	}
	info, err := h.opts.Keyring.Keyrings.PublishKeyring(r.Context(), raw, id.Name)
	if err != nil {
		h.failKeyring(w, r, err)
		return
	}
	h.opts.Logger.Info("release keyring published", "component", "httpapi", "serial", info.Serial,
		"expires", info.Expires, "key_ids", info.KeyIDs, "root_signers", info.RootSigners, "result", info.Result,
		"revision", info.Revision, "author", id.Name)
	writeJSON(w, http.StatusOK, info)
}

func (h *handler) keyringGet(w http.ResponseWriter, r *http.Request) {
	if _, err := h.allowRelease(r, auth.ReadRelease, h.opts.Store.Keyspace().Keyring()); err != nil {
		h.failKeyring(w, r, err)
		return
	}
	info, err := h.opts.Keyring.Keyrings.Keyring(r.Context())
	if err != nil {
		h.failKeyring(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (h *handler) keyringHistory(w http.ResponseWriter, r *http.Request) {
	if _, err := h.allowRelease(r, auth.ReadRelease, h.opts.Store.Keyspace().KeyringHistory()); err != nil {
		h.failKeyring(w, r, err)
		return
	}
	recs, err := h.opts.Keyring.Keyrings.KeyringHistory(r.Context())
	if err != nil {
		h.failKeyring(w, r, err)
		return
	}
	for _, rec := range recs {
		if rec.Error != "" {
			h.opts.Logger.Warn("keyring history record unreadable, listed with its error", "component", "httpapi",
				"key", rec.Key, "error", rec.Error)
		}
	}
	writeJSON(w, http.StatusOK, KeyringHistory{Records: recs})
}
