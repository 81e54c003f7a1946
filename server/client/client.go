// Package client is a Go client of the vigil-server HTTP API (the one
// vigilctl uses): mutual TLS with a role certificate, JSON in and out,
// server errors returned as *Error with the server's code and message.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/server/pki"
	"github.com/vigil-hids/vigil/server/store"
)

// Config says where the server is and which identity to present.
type Config struct {
	// Server is the API's base URL, https://HOST:PORT (http:// only for
	// a server in --insecure mode).
	Server string
	TLS    pki.Files
	// Timeout bounds each request; zero means 30s.
	Timeout time.Duration
}

// Client calls the API.
type Client struct {
	base *url.URL
	http *http.Client
}

// Error is a refusal from the server.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// New returns a client; it does not connect yet.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.Server)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("client: server must be a URL such as https://127.0.0.1:8443 (got %q)", cfg.Server)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	tr := &http.Transport{Proxy: nil, TLSHandshakeTimeout: 10 * time.Second}
	if u.Scheme == "https" {
		if cfg.TLS.CA == "" || cfg.TLS.Cert == "" || cfg.TLS.Key == "" {
			return nil, errors.New("client: ca, cert and key are required for https (flags --ca/--cert/--key, env VIGIL_CA/VIGIL_CERT/VIGIL_KEY, or the config file)")
		}
		if tr.TLSClientConfig, err = cfg.TLS.ClientConfig(); err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
	}
	return &Client{base: u, http: &http.Client{Transport: tr, Timeout: cfg.Timeout}}, nil
}

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body []byte, out any) error {
	u := *c.base
	u.Path = strings.TrimRight(u.Path, "/") + path
	u.RawQuery = q.Encode()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("calling %s: %w", c.base.Host, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("reading the response of %s %s: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e httpapi.Error
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(data))
		}
		return &Error{Status: resp.StatusCode, Code: e.Code, Message: e.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decoding the response of %s %s: %w", method, path, err)
	}
	return nil
}

func scopeQ(scope api.Scope) url.Values { return url.Values{"scope": {scope.String()}} }

// Whoami returns the identity the server sees.
func (c *Client) Whoami(ctx context.Context) (map[string]string, error) {
	var out map[string]string
	return out, c.do(ctx, "GET", "/v1/whoami", nil, nil, &out)
}

// Agents lists registrations matching labels ("k=v").
func (c *Client) Agents(ctx context.Context, labels []string, limit int) ([]store.Agent, error) {
	var out struct {
		Agents []store.Agent `json:"agents"`
	}
	q := url.Values{"label": labels}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return out.Agents, c.do(ctx, "GET", "/v1/agents", q, nil, &out)
}

// Count counts registrations matching labels, grouped by a label if by is set.
func (c *Client) Count(ctx context.Context, labels []string, by string) (store.Count, error) {
	var out store.Count
	q := url.Values{"label": labels}
	if by != "" {
		q.Set("by", by)
	}
	return out, c.do(ctx, "GET", "/v1/agents/count", q, nil, &out)
}

// Get reads a scope's document.
func (c *Client) Get(ctx context.Context, scope api.Scope) (store.Current, error) {
	var out store.Current
	return out, c.do(ctx, "GET", "/v1/config", scopeQ(scope), nil, &out)
}

// Effective returns the desired state host derives (fleet ⊕ groups ⊕ host).
func (c *Client) Effective(ctx context.Context, host string) (store.Effective, error) {
	var out store.Effective
	return out, c.do(ctx, "GET", "/v1/config/effective", url.Values{"host": {host}}, nil, &out)
}

// Set writes a JSON or YAML document to a scope. ifRevision, if not nil,
// makes the write conditional on the scope's revision.
func (c *Client) Set(ctx context.Context, scope api.Scope, doc []byte, comment string, ifRevision *int64) (store.Result, error) {
	var out store.Result
	q := scopeQ(scope)
	if comment != "" {
		q.Set("comment", comment)
	}
	if ifRevision != nil {
		q.Set("if_revision", strconv.FormatInt(*ifRevision, 10))
	}
	if doc == nil {
		doc = []byte{}
	}
	return out, c.do(ctx, "PUT", "/v1/config", q, doc, &out)
}

// History lists a scope's history, newest first.
func (c *Client) History(ctx context.Context, scope api.Scope, limit int) ([]api.Document, error) {
	var out struct {
		History []api.Document `json:"history"`
	}
	q := scopeQ(scope)
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return out.History, c.do(ctx, "GET", "/v1/config/history", q, nil, &out)
}

// Diff compares history records from and to (0: current).
func (c *Client) Diff(ctx context.Context, scope api.Scope, from, to int64) (httpapi.DiffResult, error) {
	var out httpapi.DiffResult
	q := scopeQ(scope)
	q.Set("from", strconv.FormatInt(from, 10))
	if to > 0 {
		q.Set("to", strconv.FormatInt(to, 10))
	}
	return out, c.do(ctx, "GET", "/v1/config/diff", q, nil, &out)
}

// Rollback writes history record to as the scope's new document.
func (c *Client) Rollback(ctx context.Context, scope api.Scope, to int64, comment string) (store.Result, error) {
	var out store.Result
	q := scopeQ(scope)
	q.Set("to", strconv.FormatInt(to, 10))
	if comment != "" {
		q.Set("comment", comment)
	}
	return out, c.do(ctx, "POST", "/v1/config/rollback", q, nil, &out)
}

// Stop sets (stop) or clears (resume) a scope's stop flag.
func (c *Client) Stop(ctx context.Context, scope api.Scope, stop bool, comment string) (store.Result, error) {
	var out store.Result
	q := scopeQ(scope)
	if comment != "" {
		q.Set("comment", comment)
	}
	path := "/v1/fleet/resume"
	if stop {
		path = "/v1/fleet/stop"
	}
	return out, c.do(ctx, "POST", path, q, nil, &out)
}

// Progress reports acknowledgement of revision by the hosts scope targets.
func (c *Client) Progress(ctx context.Context, scope api.Scope, revision int64) (store.Progress, error) {
	var out store.Progress
	q := scopeQ(scope)
	q.Set("revision", strconv.FormatInt(revision, 10))
	return out, c.do(ctx, "GET", "/v1/fleet/progress", q, nil, &out)
}

// Status reports the server and etcd.
func (c *Client) Status(ctx context.Context) (httpapi.Status, error) {
	var out httpapi.Status
	return out, c.do(ctx, "GET", "/v1/status", nil, nil, &out)
}
