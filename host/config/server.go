package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"time"
)

// Server is the host's HTTPS link to vigil-server: where release
// artifacts are downloaded from and inventories are uploaded to. The
// client certificate is the host's (role host); CA, cert and key default to
// the control section's.
type Server struct {
	// URL is the server's API base, e.g. https://vigil.example:8443.
	URL      string `yaml:"url"`
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// ServerLink returns the server section with its TLS files defaulted from
// the control section; nil when there is no server section.
func (c Config) ServerLink() *Server {
	if c.Server == nil {
		return nil
	}
	s := *c.Server
	if c.Control != nil && s.CAFile == "" && s.CertFile == "" && s.KeyFile == "" {
		s.CAFile, s.CertFile, s.KeyFile = c.Control.CAFile, c.Control.CertFile, c.Control.KeyFile
	}
	return &s
}

func (s Server) validate() []error {
	var errs []error
	u, err := url.Parse(s.URL)
	switch {
	case s.URL == "":
		errs = append(errs, fmt.Errorf("server.url must be set when the server section is present"))
	case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
		errs = append(errs, fmt.Errorf("server.url must be an http(s) URL with a host (got %q)", s.URL))
	}
	n := 0
	for _, f := range []string{s.CAFile, s.CertFile, s.KeyFile} {
		if f != "" {
			n++
		}
	}
	if n != 0 && n != 3 {
		errs = append(errs, fmt.Errorf("server.ca_file, server.cert_file and server.key_file must be set together (got %d of 3)", n))
	}
	return errs
}

// HTTPClient returns a client for the server: TLS with the host's client
// certificate when the files are set, plain HTTP (loopback development
// servers) otherwise. timeout bounds each whole request; 0 means none
// (downloads set their own deadlines).
func (s Server) HTTPClient(timeout time.Duration) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	if s.CAFile != "" {
		ca, err := os.ReadFile(s.CAFile)
		if err != nil {
			return nil, fmt.Errorf("server.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			return nil, fmt.Errorf("server.ca_file %s holds no PEM certificate", s.CAFile)
		}
		pair, err := tls.LoadX509KeyPair(s.CertFile, s.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("server.cert_file/key_file: %w", err)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: timeout}, nil
}
