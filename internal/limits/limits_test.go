package limits

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestProfileTable(t *testing.T) {
	tests := []struct {
		name    string
		cpu     float64
		mem     uint64
		quota   float64
		samples int
	}{
		{name: ProfileNormal, cpu: 10, mem: 200 << 20, quota: 20, samples: 4},
		{name: ProfileStrict, cpu: 5, mem: 100 << 20, quota: 10, samples: 4},
		{name: "", cpu: 10, mem: 200 << 20, quota: 20, samples: 4},
	}
	for _, tt := range tests {
		t.Run("profile="+tt.name, func(t *testing.T) {
			l, err := Profile(tt.name)
			if err != nil {
				t.Fatal(err)
			}
			if l.CPUPercent != tt.cpu || l.MemoryBytes != tt.mem || l.QuotaCPUPercent != tt.quota || l.Samples != tt.samples {
				t.Errorf("limits = %+v", l)
			}
			if l.MaxCooldown != 600*time.Second {
				t.Errorf("max cooldown = %s, want osquery's 600s", l.MaxCooldown)
			}
			if err := l.Validate("limits"); err != nil {
				t.Errorf("table entry does not validate: %v", err)
			}
		})
	}
	if _, err := Profile("lax"); !errors.Is(err, ErrUnknownProfile) {
		t.Errorf("Profile(lax) err = %v", err)
	}
}

func TestOverridesResolve(t *testing.T) {
	tests := []struct {
		name    string
		json    string
		check   func(Limits) bool
		wantErr string
	}{
		{name: "empty keeps the profile", json: `{}`, check: func(l Limits) bool { return l == profiles[ProfileNormal] }},
		{name: "strict profile", json: `{"profile":"strict"}`, check: func(l Limits) bool { return l == profiles[ProfileStrict] }},
		{name: "tighter cpu moves the quota", json: `{"cpu_percent":2}`,
			check: func(l Limits) bool { return l.CPUPercent == 2 && l.QuotaCPUPercent == 4 && l.MemoryBytes == 200<<20 }},
		{name: "durations as strings", json: `{"cooldown":"1m","max_cooldown":"30m"}`,
			check: func(l Limits) bool { return l.Cooldown == time.Minute && l.MaxCooldown == 30*time.Minute }},
		{name: "out of range", json: `{"cpu_percent":0,"samples":0}`,
			wantErr: "limits.procmon.cpu_percent must be between 0.1 and 400 (got 0)\nlimits.procmon.samples must be between 1 and 100 (got 0)"},
		{name: "quota below threshold", json: `{"cpu_percent":10,"quota_cpu_percent":5}`,
			wantErr: "limits.procmon.quota_cpu_percent must be 0 (none) or between cpu_percent (10) and 400 (got 5)"},
		{name: "unknown profile", json: `{"profile":"lax"}`, wantErr: "limits.procmon.profile: unknown profile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o Overrides
			if err := json.Unmarshal([]byte(tt.json), &o); err != nil {
				t.Fatal(err)
			}
			l, err := o.Resolve(ProfileNormal, "limits.procmon")
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(l) {
				t.Errorf("limits = %+v", l)
			}
		})
	}
}

func TestOverlay(t *testing.T) {
	tests := []struct {
		name, json, wantErr string
	}{
		{name: "empty", json: ``},
		{name: "fields", json: `{"profile":"strict","cpu_percent":3,"cooldown":"1m"}`},
		{name: "unknown key", json: `{"cpu":3}`, wantErr: `json: unknown field "cpu"`},
		{name: "wrong type", json: `{"cpu_percent":"three"}`, wantErr: "cannot unmarshal string"},
		{name: "bad duration", json: `{"cooldown":"soon"}`, wantErr: "soon"},
		{name: "not an object", json: `[1]`, wantErr: "cannot unmarshal array"},
		{name: "trailing data", json: `{} {}`, wantErr: "after the object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := Overrides{Profile: ProfileStrict}
			err := o.Overlay(json.RawMessage(tt.json))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if tt.json == "" && o.Profile != ProfileStrict {
					t.Errorf("empty input changed the profile to %q", o.Profile)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestOverlayKeepsAbsentKeys(t *testing.T) {
	var o Overrides
	if err := o.Overlay(json.RawMessage(`{"profile":"strict","cpu_percent":3}`)); err != nil {
		t.Fatal(err)
	}
	if err := o.Overlay(json.RawMessage(`{"cpu_percent":2}`)); err != nil {
		t.Fatal(err)
	}
	if o.Profile != ProfileStrict || o.CPUPercent == nil || *o.CPUPercent != 2 {
		t.Fatalf("overrides = %+v, want profile strict and cpu_percent 2", o)
	}
}
