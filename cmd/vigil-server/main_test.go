package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/api"
	"github.com/vigil-hids/vigil/internal/etcdtest"
	"github.com/vigil-hids/vigil/plugins/catalog"
	"github.com/vigil-hids/vigil/server"
	"github.com/vigil-hids/vigil/server/pki"
)

// TestInitThenServeUnderRBAC runs `vigil-server init` on a fresh data
// directory, then starts the server on it: with etcd authentication on, the
// server (etcd user vigil-server) can still do everything it needs —
// registration lease, election, desired-state writes with history, status.
func TestInitThenServeUnderRBAC(t *testing.T) {
	d := runInit(t)
	pd, data, curl, purl := d.pki, d.data, d.clientURL, d.peerURL
	for _, want := range []string{"wrote " + filepath.Join(pd, "admin.crt"), "etcd user vigil-host, role vigil-host: read /hids/server/config/, read /hids/releases/, read /hids/keyring/current, readwrite /hids/agent/", "etcd authentication enabled"} {
		if !strings.Contains(d.out, want) {
			t.Errorf("init output lacks %q:\n%s", want, d.out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := server.Start(ctx, server.Config{ID: "r1", Listen: "127.0.0.1:0", DataDir: data, EtcdClientURL: curl, EtcdPeerURL: purl,
		TLS:         pki.Files{CA: filepath.Join(pd, "ca.crt"), Cert: filepath.Join(pd, "server.crt"), Key: filepath.Join(pd, "server.key")},
		CheckPlugin: catalog.Validate, AggregateInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for deadline := time.Now().Add(20 * time.Second); !s.IsLeader(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not elected under RBAC")
		}
	}
	if _, err := s.Store().SetStop(ctx, api.Scope{Kind: api.ScopeFleet}, true, "admin", "under rbac"); err != nil {
		t.Fatal(err)
	}
	if h, err := s.Store().History(ctx, api.Scope{Kind: api.ScopeFleet}, 0); err != nil || len(h) != 1 {
		t.Fatalf("history: %v %v", h, err)
	}
	st, err := s.Status(ctx)
	if err != nil || !st.Etcd.Healthy || st.ElectionLeader != "r1" {
		t.Fatalf("status: %+v %v", st, err)
	}
}

// devInit is a directory after `vigil-server init`: the development PKI,
// the embedded etcd's data with RBAC on, and its URLs.
type devInit struct {
	pki, data, clientURL, peerURL string
	out                           string // what init printed
}

// runInit runs `vigil-server init` in a fresh temporary directory, on
// free loopback ports.
func runInit(t *testing.T) devInit {
	t.Helper()
	dir := t.TempDir()
	d := devInit{pki: filepath.Join(dir, "pki"), data: filepath.Join(dir, "data")}
	ports, err := etcdtest.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	d.clientURL, d.peerURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0]), fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"init", "--dir", d.pki, "--data-dir", d.data, "--etcd-client-url", d.clientURL, "--etcd-peer-url", d.peerURL, "--log-level", "error"})
	if err := root.Execute(); err != nil {
		t.Fatalf("init: %v\n%s", err, out.String())
	}
	d.out = out.String()
	return d
}
