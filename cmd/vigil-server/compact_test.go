package main

import (
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/server"
)

func TestCompactIntervalFlag(t *testing.T) {
	tests := []struct {
		name string
		arg  string
		want time.Duration
		err  string
	}{
		{name: "default", want: server.DefaultCompactInterval},
		{name: "off", arg: "0", want: server.CompactOff},
		{name: "minimum", arg: "1m", want: time.Minute},
		{name: "hour", arg: "1h", want: time.Hour},
		{name: "too short", arg: "30s", err: "compact-interval must be 0 (off) or at least 1m0s (got 30s)"},
		{name: "negative", arg: "-5m", err: "compact-interval must be 0 (off) or at least 1m0s (got -5m0s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := newRoot()
			args := []string{"--insecure"}
			if tt.arg != "" {
				args = append(args, "--compact-interval", tt.arg)
			}
			if err := root.ParseFlags(args); err != nil {
				t.Fatal(err)
			}
			d, _ := root.Flags().GetDuration("compact-interval")
			got, err := compactInterval(d)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("compactInterval(%s) = %v, %v; want error %q", d, got, err, tt.err)
				}
				// The command refuses it before starting anything.
				root = newRoot()
				root.SetArgs(append(args, "--data-dir", t.TempDir()))
				if err := root.Execute(); err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("vigil-server %v = %v, want %q", args, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("compactInterval(%s) = %v, %v; want %v", d, got, err, tt.want)
			}
		})
	}
}
