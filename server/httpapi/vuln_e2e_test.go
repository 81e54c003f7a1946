package httpapi_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/server/httpapi"
	"github.com/vigil-hids/vigil/server/pki"
	"github.com/vigil-hids/vigil/server/vulnstore"
	"github.com/vigil-hids/vigil/vuln/ingest"
	"github.com/vigil-hids/vigil/vuln/inventory"
)

// vulnServer serves httpapi.New with the vulnerability routes over a real
// store (maxInventory bytes decompressed per upload) behind the server's
// TLS with client certificates, as vigil-server does; it returns the
// address, the store and the fleet-wide host certificate's client config.
func vulnServer(t *testing.T, vo httpapi.VulnOptions, maxInventory int64) (string, *vulnstore.Service, *tls.Config) {
	t.Helper()
	dir := t.TempDir()
	if _, err := pki.Init(dir, pki.Options{}); err != nil {
		t.Fatal(err)
	}
	files := func(n string) pki.Files {
		return pki.Files{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, n+".crt"), Key: filepath.Join(dir, n+".key")}
	}
	svc, err := vulnstore.Open(vulnstore.Config{Dir: filepath.Join(dir, "vuln"), MaxInventory: maxInventory})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	vo.Service = svc
	// The fleet-wide host certificate (CN vigil-host).
	addr, ctc := serveTLS(t, files, httpapi.Options{Vuln: &vo}, "host")
	return addr, svc, ctc
}

// goodUpload is a valid gzipped upload for host.
func goodUpload(t *testing.T, host string) []byte {
	t.Helper()
	inv := inventory.Inventory{Ecosystem: "dpkg", OS: inventory.OS{ID: "debian", VersionID: "12"},
		Packages: []inventory.Package{{Name: "libssl3", Version: "3.0.11-1~deb12u2", Source: "openssl"}}}
	b, err := json.Marshal(ingest.Upload{Host: host, Digest: inv.Digest(), Inventory: inv})
	if err != nil {
		t.Fatal(err)
	}
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return zb.Bytes()
}

func postUpload(t *testing.T, hc *http.Client, addr string, body []byte) (int, httpapi.Error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "https://"+addr+"/v1/vuln/inventory", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Encoding", "gzip")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e httpapi.Error
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e
}

// stalledUpload opens a connection that posts an inventory whose gzip
// body decodes to decoded bytes (of a few hundred sent), then stalls with
// 1 MiB more declared (more than net/http discards before it answers, so
// a refusal reaches the client). The answer, if any, arrives on the
// returned channel.
func stalledUpload(t *testing.T, addr string, ctc *tls.Config, decoded int) (net.Conn, <-chan string) {
	t.Helper()
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	_, _ = zw.Write([]byte(`{"host":"h1","digest":"` + strings.Repeat("a", decoded-23)))
	_ = zw.Flush() // all of it decodable; the stream goes on
	conn, err := tls.Dial("tcp", addr, ctc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if _, err := fmt.Fprintf(conn, "POST /v1/vuln/inventory HTTP/1.1\r\nHost: vigil\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s",
		zb.Len()+1<<20, zb.Bytes()); err != nil {
		t.Fatal(err)
	}
	ans := make(chan string, 1)
	go func() {
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Minute)) // a failure bound, not a measure
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			ans <- err.Error()
			return
		}
		defer resp.Body.Close()
		var e httpapi.Error
		_ = json.NewDecoder(resp.Body).Decode(&e)
		ans <- fmt.Sprintf("%d %s %s", resp.StatusCode, e.Code, e.Error)
	}()
	return conn, ans
}

// TestVulnUploadInFlightBudget: the decompressed inventory uploads held at
// once are bounded server-wide, whatever the number of connections (all
// hosts hold the fleet-wide certificate; a few hundred bytes of gzip
// decode to megabytes). Eight uploads each stalled after 200 KiB
// decompressed cannot all be held in a 1 MiB budget: at least three are
// refused 503 busy (which ones depends on the order they were read), and
// nothing else is refused. Once they are gone, a valid upload is taken.
func TestVulnUploadInFlightBudget(t *testing.T) {
	const n, each, budget = 8, 200 << 10, 1 << 20
	addr, svc, ctc := vulnServer(t, httpapi.VulnOptions{MaxInFlight: budget, BodyTimeout: 10 * time.Minute}, 256<<10)
	var conns []net.Conn
	answers := make(chan string, n)
	for range n {
		c, ans := stalledUpload(t, addr, ctc, each)
		conns = append(conns, c)
		go func() { answers <- <-ans }()
	}
	// At most budget/each = 5 fit; a refused upload gives its share back,
	// so once all are read or refused at least n-5 were refused.
	timeout := time.After(2 * time.Minute) // a failure bound, not a measure
	for i := range n - budget/each {
		select {
		case a := <-answers:
			if !strings.HasPrefix(a, "503 busy server busy") {
				t.Fatalf("stalled upload answered %q, want 503 busy", a)
			}
		case <-timeout:
			t.Fatalf("%d of %d uploads stalled after %d KiB decompressed were refused busy; want at least %d: %d KiB held at once",
				i, n, each>>10, n-budget/each, n*each>>10)
		}
	}
	for _, c := range conns {
		_ = c.Close() // the stalled uploads fail and free their shares
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ctc}}
	defer hc.CloseIdleConnections()
	body := goodUpload(t, "h1")
	waitFor(t, "the valid upload taken", func() bool {
		code, e := postUpload(t, hc, addr, body)
		if code != 200 && code != http.StatusServiceUnavailable {
			t.Fatalf("upload: %d %+v", code, e)
		}
		return code == 200
	})
	if st := svc.Stats(); st.UploadsNew != 1 || st.Index.Hosts != 1 {
		t.Fatalf("store: %+v", st)
	}
}

// TestVulnUploadBodyTimeout: an upload whose body stalls is answered 408
// once the body timeout passes (the API server has no read timeout of its
// own); one sent in time is taken.
func TestVulnUploadBodyTimeout(t *testing.T) {
	addr, _, ctc := vulnServer(t, httpapi.VulnOptions{BodyTimeout: 5 * time.Second}, 0)
	_, ans := stalledUpload(t, addr, ctc, 1000)
	if a := <-ans; !strings.HasPrefix(a, "408 timeout body not received within 5s") {
		t.Fatalf("stalled upload answered %q, want 408 timeout", a)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ctc}}
	defer hc.CloseIdleConnections()
	if code, e := postUpload(t, hc, addr, goodUpload(t, "h1")); code != 200 {
		t.Fatalf("upload: %d %+v", code, e)
	}
}

// TestVulnUploadRefusals: an upload past the store's decompressed limit
// is refused too large (413, not busy: the budget always holds one upload
// at the limit), a body that is not gzip 400, and each is counted.
func TestVulnUploadRefusals(t *testing.T) {
	addr, svc, ctc := vulnServer(t, httpapi.VulnOptions{MaxInFlight: 1}, 64<<10)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ctc}}
	defer hc.CloseIdleConnections()
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	_, _ = zw.Write([]byte(`{"host":"h1","digest":"` + strings.Repeat("a", 1<<20) + `"}`))
	_ = zw.Close()
	for _, tt := range []struct {
		name string
		body []byte
		code int
		msg  string
	}{
		{"decompresses past the limit", zb.Bytes(), 413, "inventory is larger than 65536 bytes decompressed"},
		{"not gzip", []byte(`{"host":"h1"}`), 400, "body is not gzip"},
		{"gzip cut short", zb.Bytes()[:100], 400, "reading the inventory: unexpected EOF"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, e := postUpload(t, hc, addr, tt.body)
			if code != tt.code || !strings.Contains(e.Error, tt.msg) {
				t.Fatalf("got %d %+v, want %d with %q", code, e, tt.code, tt.msg)
			}
		})
	}
	if code, e := postUpload(t, hc, addr, goodUpload(t, "h1")); code != 200 {
		t.Fatalf("upload: %d %+v", code, e)
	}
	if st := svc.Stats(); st.UploadsRejected != 3 || st.Uploads != 1 {
		t.Fatalf("store: %+v", st)
	}
}
