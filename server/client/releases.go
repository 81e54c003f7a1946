package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/server/artifacts"
	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/server/rollout"
	"github.com/vigil-hids/vigil/signing"
)

// Publish uploads a bundle directory (signing's layout: manifest.json and
// binary) in one streamed multipart request: the manifest, then the binary
// read from disk as it is sent. The request is bounded by ctx only, not by
// the client's per-request timeout, since a large binary may take longer.
func (c *Client) Publish(ctx context.Context, bundleDir string) (httpapi.PublishResult, error) {
	var out httpapi.PublishResult
	raw, err := os.ReadFile(filepath.Join(bundleDir, signing.BundleManifest))
	if err != nil {
		return out, fmt.Errorf("reading the bundle: %w", err)
	}
	// Refuse locally what the server would refuse, before sending megabytes.
	sm, err := signing.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return out, fmt.Errorf("bundle %s: %w", bundleDir, err)
	}
	bin, err := os.Open(filepath.Join(bundleDir, signing.BundleBinary))
	if err != nil {
		return out, fmt.Errorf("reading the bundle: %w", err)
	}
	defer bin.Close()
	if fi, err := bin.Stat(); err != nil {
		return out, fmt.Errorf("reading the bundle: %w", err)
	} else if fi.Size() != sm.Manifest.Length {
		return out, fmt.Errorf("bundle %s: binary is %d bytes, the manifest says %d", bundleDir, fi.Size(), sm.Manifest.Length)
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	done := make(chan struct{})
	defer func() { <-done }()
	go func() {
		defer close(done)
		err := func() error {
			w, err := mw.CreateFormFile(httpapi.PartManifest, signing.BundleManifest)
			if err != nil {
				return err
			}
			if _, err := w.Write(raw); err != nil {
				return err
			}
			if w, err = mw.CreateFormFile(httpapi.PartBinary, signing.BundleBinary); err != nil {
				return err
			}
			if _, err := io.Copy(w, bin); err != nil {
				return err
			}
			return mw.Close()
		}()
		pw.CloseWithError(err)
	}()
	req, err := http.NewRequestWithContext(ctx, "POST", c.url("/v1/releases", nil), pr)
	if err != nil {
		pr.CloseWithError(err)
		return out, err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	hc := *c.http
	hc.Timeout = 0
	resp, err := hc.Do(req)
	pr.CloseWithError(io.ErrClosedPipe) // stops the writer if the server answered early
	if err != nil {
		return out, fmt.Errorf("calling %s: %w", c.base.Host, err)
	}
	return out, decode(resp, "POST", "/v1/releases", &out)
}

func (c *Client) url(path string, q url.Values) string {
	u := *c.base
	u.Path = strings.TrimRight(u.Path, "/") + path
	u.RawQuery = q.Encode()
	return u.String()
}

// decode reads resp as do does: a JSON body, or an *Error.
func decode(resp *http.Response, method, path string, out any) error {
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
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decoding the response of %s %s: %w", method, path, err)
	}
	return nil
}

// Releases lists published releases of plugin ("" for all).
func (c *Client) Releases(ctx context.Context, plugin string) ([]rollout.Release, error) {
	var out struct {
		Releases []rollout.Release `json:"releases"`
	}
	q := url.Values{}
	if plugin != "" {
		q.Set("plugin", plugin)
	}
	return out.Releases, c.do(ctx, "GET", "/v1/releases", q, nil, &out)
}

// Manifest returns one platform's signed manifest of a release as
// published, byte for byte.
func (c *Client) Manifest(ctx context.Context, plugin, version, os, arch string) ([]byte, error) {
	path := "/v1/releases/" + url.PathEscape(plugin) + "/" + url.PathEscape(version)
	req, err := http.NewRequestWithContext(ctx, "GET", c.url(path, url.Values{"os": {os}, "arch": {arch}}), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("calling %s: %w", c.base.Host, err)
	}
	var raw json.RawMessage
	return raw, decode(resp, "GET", path, &raw)
}

// Manifests returns every platform's signed manifest of a release.
func (c *Client) Manifests(ctx context.Context, plugin, version string) (httpapi.VersionManifests, error) {
	var out httpapi.VersionManifests
	return out, c.do(ctx, "GET", "/v1/releases/"+url.PathEscape(plugin)+"/"+url.PathEscape(version), nil, nil, &out)
}

// RolloutSet moves plugin's desired version at scope.
func (c *Client) RolloutSet(ctx context.Context, scope api.Scope, plugin string, r httpapi.RolloutRequest) (rollout.SetResult, error) {
	var out rollout.SetResult
	body, err := json.Marshal(r)
	if err != nil {
		return out, err
	}
	return out, c.do(ctx, "POST", "/v1/rollouts/"+url.PathEscape(plugin), scopeQ(scope), body, &out)
}

// RolloutUndo restores plugin's previous desired version at scope. With
// requirePlatforms it is refused when hosts the restored version targets
// run a platform it is not published for (otherwise the answer warns).
func (c *Client) RolloutUndo(ctx context.Context, scope api.Scope, plugin, comment string, requirePlatforms bool) (rollout.SetResult, error) {
	var out rollout.SetResult
	q := scopeQ(scope)
	if comment != "" {
		q.Set("comment", comment)
	}
	if requirePlatforms {
		q.Set("require_platforms", "true")
	}
	return out, c.do(ctx, "POST", "/v1/rollouts/"+url.PathEscape(plugin)+"/undo", q, nil, &out)
}

// RolloutStatus aggregates what the hosts scope targets report of plugin.
func (c *Client) RolloutStatus(ctx context.Context, scope api.Scope, plugin string) (rollout.Status, error) {
	var out rollout.Status
	return out, c.do(ctx, "GET", "/v1/rollouts/"+url.PathEscape(plugin)+"/status", scopeQ(scope), nil, &out)
}

// RemoveRelease removes a published release: the platform os/arch of
// version, or every platform of it when os and arch are empty. comment
// says why; it is kept in the removal record.
func (c *Client) RemoveRelease(ctx context.Context, plugin, version, os, arch, comment string) (httpapi.RemoveResult, error) {
	var out httpapi.RemoveResult
	q := url.Values{"comment": {comment}}
	if os != "" || arch != "" {
		q.Set("os", os)
		q.Set("arch", arch)
	}
	return out, c.do(ctx, "DELETE", "/v1/releases/"+url.PathEscape(plugin)+"/"+url.PathEscape(version), q, nil, &out)
}

// RemovedReleases lists the removal records of plugin ("" for all).
func (c *Client) RemovedReleases(ctx context.Context, plugin string) ([]rollout.Removal, error) {
	var out httpapi.RemoveResult
	q := url.Values{}
	if plugin != "" {
		q.Set("plugin", plugin)
	}
	return out.Removed, c.do(ctx, "GET", "/v1/releases-removed", q, nil, &out)
}

// CollectArtifacts removes from the answering replica's artifact store the
// artifacts no manifest names that are older than grace (zero: the
// server's default); with dryRun it only reports them.
func (c *Client) CollectArtifacts(ctx context.Context, grace time.Duration, dryRun bool) (artifacts.GCReport, error) {
	var out artifacts.GCReport
	q := url.Values{"dry_run": {strconv.FormatBool(dryRun)}}
	if grace != 0 {
		q.Set("grace", grace.String())
	}
	return out, c.do(ctx, "POST", "/v1/artifacts/gc", q, nil, &out)
}
