package example

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadSample(t *testing.T) {
	tests := []struct {
		name    string
		root    string
		want    Sample
		wantErr string
	}{
		{
			name: "calm four-CPU machine",
			root: "testdata/calm",
			want: Sample{Load1: 0.52, Load5: 0.58, Load15: 0.59, Runnable: 2, Procs: 1234, CPUs: 4, MemTotalKB: 16314484, MemAvailableKB: 9764500},
		},
		{
			name: "busy two-CPU machine",
			root: "testdata/busy",
			want: Sample{Load1: 12, Load5: 9.5, Load15: 4.25, Runnable: 13, Procs: 402, CPUs: 2, MemTotalKB: 4030000, MemAvailableKB: 120400},
		},
		{name: "malformed loadavg", root: "testdata/broken", wantErr: `parsing testdata/broken/loadavg: example: unexpected format: load "zero"`},
		{name: "missing files", root: "testdata/none", wantErr: "reading testdata/none/loadavg: open testdata/none/loadavg: no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readSample(tt.root)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("readSample(%s) error = %v, want %q", tt.root, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("readSample(%s) = %+v, want %+v", tt.root, got, tt.want)
			}
		})
	}
}

func TestParsersRejectMalformedInput(t *testing.T) {
	tests := []struct {
		name  string
		parse func(io.Reader, *Sample) error
		input string
	}{
		{"loadavg too short", parseLoadavg, "0.1 0.2 0.3\n"},
		{"loadavg negative", parseLoadavg, "-1 0.2 0.3 1/2 3\n"},
		{"loadavg NaN", parseLoadavg, "NaN 0.2 0.3 1/2 3\n"},
		{"loadavg infinite", parseLoadavg, "0.1 +Inf 0.3 1/2 3\n"},
		{"loadavg absurd", parseLoadavg, "0.1 0.2 1e300 1/2 3\n"},
		{"loadavg without slash", parseLoadavg, "0.1 0.2 0.3 12 3\n"},
		{"loadavg bad total", parseLoadavg, "0.1 0.2 0.3 1/x 3\n"},
		{"meminfo missing MemAvailable", parseMeminfo, "MemTotal: 100 kB\n"},
		{"meminfo bad number", parseMeminfo, "MemTotal: lots kB\nMemAvailable: 1 kB\n"},
		{"stat without cpus", parseStat, "cpu  1 2 3\nctxt 5\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Sample
			if err := tt.parse(strings.NewReader(tt.input), &s); !errors.Is(err, errFormat) {
				t.Errorf("error = %v, want errFormat", err)
			}
		})
	}
}

func TestLoadPerCPU(t *testing.T) {
	tests := []struct {
		name string
		s    Sample
		want float64
	}{
		{"four CPUs", Sample{Load1: 2, CPUs: 4}, 0.5},
		{"unknown CPU count counts as one", Sample{Load1: 3}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.s.LoadPerCPU(); got != tt.want {
				t.Errorf("LoadPerCPU = %v, want %v", got, tt.want)
			}
		})
	}
}

// FuzzParseProc feeds arbitrary bytes to each /proc parser: none may
// panic, and an accepted loadavg has only finite, non-negative values.
func FuzzParseProc(f *testing.F) {
	for _, dir := range []string{"calm", "busy", "broken"} {
		for _, name := range []string{"loadavg", "meminfo", "stat"} {
			b, err := os.ReadFile(filepath.Join("testdata", dir, name))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Add([]byte("1/2/3 4 5 6/7"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s Sample
		if err := parseLoadavg(strings.NewReader(string(b)), &s); err == nil {
			if !(s.Load1 >= 0 && s.Load1 < 1e9) || !(s.Load5 >= 0 && s.Load5 < 1e9) || !(s.Load15 >= 0 && s.Load15 < 1e9) || s.Runnable < 0 || s.Procs < 0 {
				t.Errorf("accepted negative values %+v from %q", s, b)
			}
		}
		_ = parseMeminfo(strings.NewReader(string(b)), &s)
		if err := parseStat(strings.NewReader(string(b)), &s); err == nil && s.CPUs == 0 {
			t.Errorf("accepted stat with no CPUs: %q", b)
		}
	})
}
