// Package auth decides who an API caller is and what it may do. Callers
// are identified by their TLS client certificate: the common name is the
// identity (the author recorded in history), the organizational unit is
// the role. Roles: admin writes anything; operator stops and resumes any
// scope and writes group and host documents; auditor only reads; host
// (the agents' certificate) may not use the operator API, except to read
// release manifests and download artifacts. Publishing releases is for
// admins.
package auth

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/vigil-hids/vigil/api"
)

// Role is what an identity may do.
type Role string

// Roles.
const (
	Admin    Role = "admin"
	Operator Role = "operator"
	Auditor  Role = "auditor"
	Host     Role = "host"
)

// Action is a kind of API request.
type Action string

// Actions.
const (
	Read        Action = "read"
	WriteConfig Action = "write"
	Stop        Action = "stop"
	// ReadRelease reads release manifests and downloads artifacts.
	ReadRelease Action = "read-release"
	// Publish uploads a release (artifact and signed manifest).
	Publish Action = "publish"
)

// ErrForbidden is wrapped by every refusal.
var ErrForbidden = errors.New("auth: forbidden")

// ErrUnauthenticated means the caller presented no usable identity.
var ErrUnauthenticated = errors.New("auth: unauthenticated")

// Identity is an authenticated caller.
type Identity struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
}

// FromCertificate reads the identity from a verified client certificate.
func FromCertificate(c *x509.Certificate) (Identity, error) {
	if c == nil {
		return Identity{}, fmt.Errorf("%w: no client certificate", ErrUnauthenticated)
	}
	if c.Subject.CommonName == "" {
		return Identity{}, fmt.Errorf("%w: client certificate has no common name", ErrUnauthenticated)
	}
	if len(c.Subject.OrganizationalUnit) != 1 {
		return Identity{}, fmt.Errorf("%w: client certificate %q must carry exactly one organizational unit naming its role (got %v)",
			ErrUnauthenticated, c.Subject.CommonName, c.Subject.OrganizationalUnit)
	}
	r := Role(c.Subject.OrganizationalUnit[0])
	switch r {
	case Admin, Operator, Auditor, Host:
	default:
		return Identity{}, fmt.Errorf("%w: client certificate %q names unknown role %q (want admin, operator, auditor or host)",
			ErrUnauthenticated, c.Subject.CommonName, r)
	}
	return Identity{Name: c.Subject.CommonName, Role: r}, nil
}

// Allow says whether id may do action on scope, whose etcd key is key. A
// refusal names the identity, the role, the action and the key.
func (id Identity) Allow(action Action, scope api.Scope, key string) error {
	ok := false
	why := ""
	switch id.Role {
	case Admin:
		ok = true
	case Operator:
		switch action {
		case Read, Stop, ReadRelease:
			ok = true
		case WriteConfig:
			ok = scope.Kind != api.ScopeFleet
			why = "fleet-wide documents are written by admins"
		case Publish:
			why = "releases are published by admins"
		}
	case Auditor:
		ok = action == Read || action == ReadRelease
		why = "auditors only read"
	case Host:
		ok = action == ReadRelease
		why = "hosts talk to etcd, not to the operator API; they only read releases and artifacts"
	}
	if ok {
		return nil
	}
	verb := map[Action]string{Read: "read", WriteConfig: "write", Stop: "stop or resume",
		ReadRelease: "read", Publish: "publish"}[action]
	return fmt.Errorf("%w: role %q (%s) may not %s %s: %s", ErrForbidden, id.Role, id.Name, verb, key, why)
}

type ctxKey struct{}

// With returns ctx carrying id.
func With(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// From returns the identity in ctx.
func From(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}
