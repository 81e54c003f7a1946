package auth

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"strings"
	"testing"

	"github.com/vigil-hids/vigil/api"
)

func TestAllow(t *testing.T) {
	fleet := api.Scope{Kind: api.ScopeFleet}
	group := api.Scope{Kind: api.ScopeGroup, Label: "env", Value: "prod"}
	tests := []struct {
		name   string
		role   Role
		action Action
		scope  api.Scope
		want   string // "" means allowed
	}{
		{name: "admin writes fleet", role: Admin, action: WriteConfig, scope: fleet},
		{name: "operator writes group", role: Operator, action: WriteConfig, scope: group},
		{name: "operator stops fleet", role: Operator, action: Stop, scope: fleet},
		{name: "operator may not write fleet", role: Operator, action: WriteConfig, scope: fleet,
			want: `role "operator" (x) may not write /k: fleet-wide documents are written by admins`},
		{name: "auditor reads", role: Auditor, action: Read, scope: fleet},
		{name: "auditor may not write", role: Auditor, action: WriteConfig, scope: group, want: `role "auditor" (x) may not write /k`},
		{name: "auditor may not stop", role: Auditor, action: Stop, scope: fleet, want: `may not stop or resume /k`},
		{name: "host may not read", role: Host, action: Read, scope: fleet, want: `role "host" (x) may not read /k`},
		{name: "host reads releases", role: Host, action: ReadRelease},
		{name: "auditor reads releases", role: Auditor, action: ReadRelease},
		{name: "admin publishes", role: Admin, action: Publish},
		{name: "operator may not publish", role: Operator, action: Publish, want: `may not publish /k: releases are published by admins`},
		{name: "host may not publish", role: Host, action: Publish, want: `role "host" (x) may not publish /k`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Identity{Name: "x", Role: tt.role}.Allow(tt.action, tt.scope, "/k")
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Allow = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestFromCertificate(t *testing.T) {
	tests := []struct {
		name string
		sub  pkix.Name
		want string
	}{
		{name: "ok", sub: pkix.Name{CommonName: "alice", OrganizationalUnit: []string{"operator"}}},
		{name: "no role", sub: pkix.Name{CommonName: "alice"}, want: "exactly one organizational unit"},
		{name: "unknown role", sub: pkix.Name{CommonName: "alice", OrganizationalUnit: []string{"root"}}, want: `unknown role "root"`},
		{name: "no name", sub: pkix.Name{OrganizationalUnit: []string{"admin"}}, want: "no common name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := FromCertificate(&x509.Certificate{Subject: tt.sub})
			if tt.want == "" {
				if err != nil || id.Name != "alice" || id.Role != Operator {
					t.Fatalf("%+v %v", id, err)
				}
				return
			}
			if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}
