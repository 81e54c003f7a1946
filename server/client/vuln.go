package client

import (
	"context"
	"encoding/json"
	"net/url"
	"strconv"

	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/server/vulnstore"
	"github.com/vigil-hids/vigil/vuln/index"
	"github.com/vigil-hids/vigil/vuln/ingest"
)

// VulnHosts returns the hosts a CVE (or advisory ID) affects, at most
// limit host names (0: all; HostCount counts them all).
func (c *Client) VulnHosts(ctx context.Context, id string, limit int) (*index.CVEHosts, error) {
	var out index.CVEHosts
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return &out, c.do(ctx, "GET", "/v1/vuln/cves/"+url.PathEscape(id), q, nil, &out)
}

// VulnHost returns a host's vulnerable packages.
func (c *Client) VulnHost(ctx context.Context, host string) (*index.HostReport, error) {
	var out index.HostReport
	return &out, c.do(ctx, "GET", "/v1/vuln/hosts/"+url.PathEscape(host), nil, nil, &out)
}

// VulnPackage returns the installed versions of a binary package across
// the fleet, only those older than below when it is set.
func (c *Client) VulnPackage(ctx context.Context, name, below string) (*httpapi.PackageVersions, error) {
	var out httpapi.PackageVersions
	q := url.Values{}
	if below != "" {
		q.Set("below", below)
	}
	return &out, c.do(ctx, "GET", "/v1/vuln/packages/"+url.PathEscape(name), q, nil, &out)
}

// VulnTop returns the n CVEs affecting the most hosts.
func (c *Client) VulnTop(ctx context.Context, n int) (*httpapi.Top, error) {
	var out httpapi.Top
	q := url.Values{}
	if n > 0 {
		q.Set("n", strconv.Itoa(n))
	}
	return &out, c.do(ctx, "GET", "/v1/vuln/top", q, nil, &out)
}

// VulnStats returns the vulnerability store's counters.
func (c *Client) VulnStats(ctx context.Context) (*vulnstore.Stats, error) {
	var out vulnstore.Stats
	return &out, c.do(ctx, "GET", "/v1/vuln/stats", nil, nil, &out)
}

// VulnReload makes the server import its OSV paths again (admin).
func (c *Client) VulnReload(ctx context.Context) (*vulnstore.Import, error) {
	var out vulnstore.Import
	return &out, c.do(ctx, "POST", "/v1/vuln/reload", nil, []byte{}, &out)
}

// VulnDigest reports a host's inventory digest, as vigil-host does (role
// host or admin).
func (c *Client) VulnDigest(ctx context.Context, d ingest.DigestReport) (ingest.DigestAnswer, error) {
	var out ingest.DigestAnswer
	b, err := json.Marshal(d)
	if err != nil {
		return out, err
	}
	return out, c.do(ctx, "POST", "/v1/vuln/digest", nil, b, &out)
}

// VulnUpload uploads a full inventory, uncompressed (vigil-host gzips
// its uploads; role host or admin).
func (c *Client) VulnUpload(ctx context.Context, u *ingest.Upload) (ingest.UploadAnswer, error) {
	var out ingest.UploadAnswer
	b, err := json.Marshal(u)
	if err != nil {
		return out, err
	}
	return out, c.do(ctx, "POST", "/v1/vuln/inventory", nil, b, &out)
}
