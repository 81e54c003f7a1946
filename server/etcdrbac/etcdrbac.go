// Package etcdrbac bootstraps etcd's role-based access control for Vigil's
// keyspace: one role per kind of client, each granted key prefixes, one user
// per role named like the certificate common name that client presents, and
// then authentication switched on. etcd checks permissions by key range, so
// what it can express is "hosts may write under agent/", not "this host may
// write only its own key" (docs/security.md).
package etcdrbac

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/vigil-hids/vigil/api"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Grant is one permission on a key prefix.
type Grant struct {
	Prefix string
	Perm   clientv3.PermissionType
}

// String names the permission as etcdctl does.
func (g Grant) String() string {
	return map[clientv3.PermissionType]string{
		clientv3.PermissionType(clientv3.PermRead):      "read",
		clientv3.PermissionType(clientv3.PermWrite):     "write",
		clientv3.PermissionType(clientv3.PermReadWrite): "readwrite",
	}[g.Perm] + " " + g.Prefix
}

// Role is an etcd role and the user that holds it.
type Role struct {
	Name   string
	User   string
	Grants []Grant
}

// Roles returns Vigil's roles for keyspace ks: the server reads and writes
// everything under the prefix; hosts read desired state, releases and the
// published release keyring (read only: its root signatures are the trust,
// and a host must not be able to replace it for the fleet) and write only
// under agent/; auditors read everything.
func Roles(ks api.Keyspace) []Role {
	agentRoot := ks.Prefix + "/agent/"
	return []Role{
		{Name: "vigil-server", User: "vigil-server", Grants: []Grant{{ks.Prefix + "/", clientv3.PermissionType(clientv3.PermReadWrite)}}},
		{Name: "vigil-host", User: "vigil-host", Grants: []Grant{
			{ks.Configs(), clientv3.PermissionType(clientv3.PermRead)},
			{ks.Releases(), clientv3.PermissionType(clientv3.PermRead)},
			{ks.Keyring(), clientv3.PermissionType(clientv3.PermRead)},
			{agentRoot, clientv3.PermissionType(clientv3.PermReadWrite)},
		}},
		{Name: "vigil-auditor", User: "auditor", Grants: []Grant{{ks.Prefix + "/", clientv3.PermissionType(clientv3.PermRead)}}},
	}
}

// Result says what Bootstrap did.
type Result struct {
	// RootPassword is the password given to the new root user; empty if
	// root existed already.
	RootPassword string
	// AlreadyEnabled is true if authentication was on before.
	AlreadyEnabled bool
}

// Bootstrap creates the roles and users (existing ones are kept, grants
// re-applied), a root user with a random password if there is none, and
// enables authentication. cli must be allowed to manage auth: before auth
// is on, any client; after, root. Users have no password: they
// authenticate by the common name of their client certificate.
func Bootstrap(ctx context.Context, cli *clientv3.Client, ks api.Keyspace) (Result, error) {
	var res Result
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		return res, fmt.Errorf("etcdrbac: reading auth status: %w", err)
	}
	res.AlreadyEnabled = st.Enabled
	for _, r := range Roles(ks) {
		if _, err := cli.RoleAdd(ctx, r.Name); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
			return res, fmt.Errorf("etcdrbac: adding role %s: %w", r.Name, err)
		}
		for _, g := range r.Grants {
			if _, err := cli.RoleGrantPermission(ctx, r.Name, g.Prefix, clientv3.GetPrefixRangeEnd(g.Prefix), g.Perm); err != nil {
				return res, fmt.Errorf("etcdrbac: granting %v on %s to %s: %w", g.Perm, g.Prefix, r.Name, err)
			}
		}
		if _, err := cli.UserAddWithOptions(ctx, r.User, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
			return res, fmt.Errorf("etcdrbac: adding user %s: %w", r.User, err)
		}
		if _, err := cli.UserGrantRole(ctx, r.User, r.Name); err != nil {
			return res, fmt.Errorf("etcdrbac: granting role %s to %s: %w", r.Name, r.User, err)
		}
	}
	if _, err := cli.UserGet(ctx, "root"); err != nil {
		pw := make([]byte, 24)
		if _, err := rand.Read(pw); err != nil {
			return res, err
		}
		res.RootPassword = hex.EncodeToString(pw)
		if _, err := cli.UserAdd(ctx, "root", res.RootPassword); err != nil {
			return res, fmt.Errorf("etcdrbac: adding root: %w", err)
		}
		if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
			return res, fmt.Errorf("etcdrbac: granting root: %w", err)
		}
	}
	if !st.Enabled {
		if _, err := cli.AuthEnable(ctx); err != nil {
			return res, fmt.Errorf("etcdrbac: enabling auth: %w", err)
		}
	}
	return res, nil
}
