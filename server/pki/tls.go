package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// Files names a CA bundle and a certificate/key pair on disk.
type Files struct {
	CA   string `json:"ca,omitempty" yaml:"ca,omitempty"`
	Cert string `json:"cert,omitempty" yaml:"cert,omitempty"`
	Key  string `json:"key,omitempty" yaml:"key,omitempty"`
}

// Empty reports whether no file is named.
func (f Files) Empty() bool { return f.CA == "" && f.Cert == "" && f.Key == "" }

// Validate checks that the names are given together.
func (f Files) Validate(prefix string) error {
	if f.Empty() {
		return nil
	}
	var errs []error
	if f.CA == "" {
		errs = append(errs, fmt.Errorf("%s-ca is required with TLS", prefix))
	}
	if (f.Cert == "") != (f.Key == "") {
		errs = append(errs, fmt.Errorf("%s-cert and %s-key go together (got cert %q, key %q)", prefix, prefix, f.Cert, f.Key))
	}
	return errors.Join(errs...)
}

func (f Files) pool() (*x509.CertPool, error) {
	b, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("reading CA %s: %w", f.CA, err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA %s holds no PEM certificate", f.CA)
	}
	return p, nil
}

// ClientConfig is a TLS client configuration that trusts CA and presents
// the pair, if any.
func (f Files) ClientConfig() (*tls.Config, error) {
	p, err := f.pool()
	if err != nil {
		return nil, err
	}
	c := &tls.Config{RootCAs: p, MinVersion: tls.VersionTLS12}
	if f.Cert != "" {
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("loading %s: %w", f.Cert, err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

// ServerConfig is a TLS server configuration that presents the pair and
// requires a client certificate signed by CA.
func (f Files) ServerConfig() (*tls.Config, error) {
	p, err := f.pool()
	if err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", f.Cert, err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientCAs:    p,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}
