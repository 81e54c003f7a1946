// Package pki creates the development certificate authority and the
// certificates `vigil-server init` writes for a quickstart: a CA, a server
// certificate with loopback names, and one client certificate per role
// whose common name is the caller's identity and whose organizational unit
// is its role. Production fleets bring their own PKI.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Identity is the subject of one client certificate.
type Identity struct {
	// Name is the common name: the author recorded in history, and the etcd
	// user name when the certificate is used against etcd.
	Name string
	// Role is the organizational unit: admin, operator, auditor or host.
	Role string
	// File is the base name of the .crt/.key pair.
	File string
}

// ServerName is the common name of the server certificate, which the server
// also presents to etcd as its client identity (etcd user "vigil-server").
const ServerName = "vigil-server"

// DefaultIdentities are the client certificates init creates.
var DefaultIdentities = []Identity{
	{Name: "admin", Role: "admin", File: "admin"},
	{Name: "operator", Role: "operator", File: "operator"},
	{Name: "auditor", Role: "auditor", File: "auditor"},
	{Name: "vigil-host", Role: "host", File: "host"},
}

// Options configures Init.
type Options struct {
	// Hosts are extra DNS names or IP addresses for the server certificate,
	// beyond localhost, 127.0.0.1 and ::1.
	Hosts []string
	// Identities are the client certificates; nil means DefaultIdentities.
	Identities []Identity
	// Validity is how long certificates last; zero means one year.
	Validity time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Init writes ca.crt/ca.key, server.crt/server.key and one pair per
// identity into dir. An existing CA is reused and existing pairs are kept,
// so running it twice is harmless. It returns the paths written.
func Init(dir string, opts Options) ([]string, error) {
	if opts.Identities == nil {
		opts.Identities = DefaultIdentities
	}
	if opts.Validity == 0 {
		opts.Validity = 365 * 24 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: creating %s: %w", dir, err)
	}
	ca, caKey, written, err := loadOrCreateCA(dir, opts)
	if err != nil {
		return nil, err
	}
	issue := func(base string, tmpl *x509.Certificate) error {
		if exists(filepath.Join(dir, base+".crt")) {
			return nil
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return fmt.Errorf("pki: signing %s: %w", base, err)
		}
		if err := writePair(dir, base, der, key); err != nil {
			return err
		}
		written = append(written, filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key"))
		return nil
	}
	srv := template(opts, pkix.Name{CommonName: ServerName, OrganizationalUnit: []string{"server"}})
	srv.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	srv.DNSNames = []string{"localhost"}
	srv.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, h := range opts.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			srv.IPAddresses = append(srv.IPAddresses, ip)
		} else {
			srv.DNSNames = append(srv.DNSNames, h)
		}
	}
	if err := issue("server", srv); err != nil {
		return written, err
	}
	for _, id := range opts.Identities {
		c := template(opts, pkix.Name{CommonName: id.Name, OrganizationalUnit: []string{id.Role}})
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		if err := issue(id.File, c); err != nil {
			return written, err
		}
	}
	return written, nil
}

func template(opts Options, subject pkix.Name) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	now := opts.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(opts.Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
}

func loadOrCreateCA(dir string, opts Options) (*x509.Certificate, *ecdsa.PrivateKey, []string, error) {
	crtPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if exists(crtPath) {
		crt, key, err := LoadPair(crtPath, keyPath)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("pki: reusing the CA in %s: %w", dir, err)
		}
		return crt, key, nil, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := template(opts, pkix.Name{CommonName: "Vigil development CA", Organization: []string{"Vigil"}})
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("pki: creating the CA: %w", err)
	}
	if err := writePair(dir, "ca", der, key); err != nil {
		return nil, nil, nil, err
	}
	crt, err := x509.ParseCertificate(der)
	return crt, key, []string{crtPath, keyPath}, err
}

func writePair(dir, base string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, base+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return fmt.Errorf("pki: writing %s.key: %w", base, err)
	}
	if err := os.WriteFile(filepath.Join(dir, base+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("pki: writing %s.crt: %w", base, err)
	}
	return nil
}

// LoadPair reads a PEM certificate and its EC private key.
func LoadPair(crtPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, err := os.ReadFile(crtPath)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	cp, _ := pem.Decode(cb)
	kp, _ := pem.Decode(kb)
	if cp == nil || kp == nil {
		return nil, nil, errors.New("pki: not PEM")
	}
	crt, err := x509.ParseCertificate(cp.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParseECPrivateKey(kp.Bytes)
	return crt, key, err
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
