package pki

import (
	"crypto/x509"
	"path/filepath"
	"testing"
)

func TestInitIsIdempotentAndChainsVerify(t *testing.T) {
	dir := t.TempDir()
	first, err := Init(dir, Options{Hosts: []string{"vigil.example", "10.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != 12 {
		t.Fatalf("wrote %d files, want 12: %v", len(first), first)
	}
	again, err := Init(dir, Options{})
	if err != nil || len(again) != 0 {
		t.Fatalf("second Init wrote %v, %v", again, err)
	}
	ca, _, err := LoadPair(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	srv, _, err := LoadPair(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"127.0.0.1", "localhost", "::1", "vigil.example", "10.0.0.1"} {
		if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}
	for _, id := range DefaultIdentities {
		t.Run(id.File, func(t *testing.T) {
			c, _, err := LoadPair(filepath.Join(dir, id.File+".crt"), filepath.Join(dir, id.File+".key"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatal(err)
			}
			if c.Subject.CommonName != id.Name || len(c.Subject.OrganizationalUnit) != 1 || c.Subject.OrganizationalUnit[0] != id.Role {
				t.Fatalf("subject = %v", c.Subject)
			}
		})
	}
}

func TestFilesValidate(t *testing.T) {
	tests := []struct {
		name  string
		files Files
		ok    bool
	}{
		{name: "empty", ok: true},
		{name: "complete", files: Files{CA: "a", Cert: "b", Key: "c"}, ok: true},
		{name: "ca only", files: Files{CA: "a"}, ok: true},
		{name: "no ca", files: Files{Cert: "b", Key: "c"}},
		{name: "cert without key", files: Files{CA: "a", Cert: "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.files.Validate("etcd"); (err == nil) != tt.ok {
				t.Fatalf("Validate = %v", err)
			}
		})
	}
}
