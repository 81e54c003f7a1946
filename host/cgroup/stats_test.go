package cgroup

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func TestKV(t *testing.T) {
	v1stat, err := os.ReadFile("testdata/v1-memory.stat")
	if err != nil {
		t.Fatal(err)
	}
	oom, err := os.ReadFile("testdata/v1-memory.oom_control")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   []byte
		key  string
		want uint64
	}{
		{name: "v1 memory.stat total_rss, not rss", in: v1stat, key: "total_rss", want: wantKV(t, v1stat, "total_rss")},
		{name: "v1 oom_control", in: oom, key: "oom_kill", want: wantKV(t, oom, "oom_kill")},
		{name: "prefix of another key does not match", in: []byte("oom_kill_disable 1\noom_kill 4\n"), key: "oom_kill", want: 4},
		{name: "missing", in: []byte("anon 5\n"), key: "file", want: 0},
		{name: "no trailing newline", in: []byte("a 1\nusage_usec 77"), key: "usage_usec", want: 77},
		{name: "max reads as zero", in: []byte("x max\n"), key: "x", want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := kv(tt.in, tt.key); got != tt.want {
				t.Errorf("kv(%q) = %d, want %d", tt.key, got, tt.want)
			}
		})
	}
}

// wantKV finds a key the slow way, to check kv against a real kernel file.
func wantKV(t *testing.T, b []byte, key string) uint64 {
	t.Helper()
	for _, line := range splitLines(b) {
		f := splitFields([]byte(line))
		if len(f) == 2 && f[0] == key {
			v, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("no %s in fixture", key)
	return 0
}

func splitLines(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == '\n' {
			out = append(out, string(b[start:i]))
			start = i + 1
		}
	}
	return append(out, string(b[start:]))
}

// TestStatsDoNotAllocate reads a real group's accounting.
func TestStatsDoNotAllocate(t *testing.T) {
	m := newTestManager(t, "")
	g, err := m.Create("allocs", Limits{MemoryBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Stats(); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(50, func() {
		if _, err := g.Stats(); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Stats allocates %v times per call, want 0", n)
	}
	if _, err := os.Stat(filepath.Join(g.Path(), "memory.stat")); err != nil {
		t.Fatal(err)
	}
}

func FuzzKV(f *testing.F) {
	b, err := os.ReadFile("testdata/v1-memory.stat")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b, "total_rss")
	f.Add([]byte("oom_kill 3\n"), "oom_kill")
	f.Add([]byte("\n\n k\n"), "")
	f.Fuzz(func(t *testing.T, b []byte, key string) {
		kv(b, key)
		single(b)
	})
}
