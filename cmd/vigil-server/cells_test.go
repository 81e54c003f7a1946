package main

import (
	"strings"
	"testing"

	"github.com/vigil-hids/vigil/api"
)

func TestParseCell(t *testing.T) {
	c, err := parseCell("idc-b=https://10.0.0.1:2379,https://10.0.0.2:2379")
	if err != nil || c.Name != "idc-b" || len(c.Endpoints) != 2 || c.Endpoints[1] != "https://10.0.0.2:2379" {
		t.Fatalf("parseCell = %+v, %v", c, err)
	}
	for _, bad := range []string{"", "idc-b", "idc-b=", "=http://x:2379", "a b=http://x:2379", "b=http://x:2379,,http://y:2379"} {
		if _, err := parseCell(bad); err == nil || !strings.Contains(err.Error(), "cell") {
			t.Errorf("parseCell(%q) = %v, want an error naming the cell", bad, err)
		}
	}
	f := &flags{cells: []string{"b=http://127.0.0.1:1"}, logLevel: "info"}
	f.cfg.CellName = "a"
	cfg, err := f.config()
	if err != nil || len(cfg.Cells) != 1 || cfg.Cells[0].Name != "b" {
		t.Fatalf("config with --cell: %+v, %v", cfg.Cells, err)
	}
	cfg.Cells = append(cfg.Cells, cfg.Cells[0])
	cfg.Insecure, cfg.DataDir = true, "/tmp/x"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), `cell "b": name used twice`) {
		t.Errorf("two cells named b: %v", err)
	}
}

func FuzzParseCell(f *testing.F) {
	for _, s := range []string{"b=http://x:2379", "b=http://x:2379,http://y:2379", "=", "b=,", "a=b=c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseCell(s)
		if err != nil {
			return
		}
		if !api.ValidName(c.Name) || len(c.Endpoints) == 0 {
			t.Fatalf("parseCell(%q) accepted %+v", s, c)
		}
		for _, e := range c.Endpoints {
			if e == "" {
				t.Fatalf("parseCell(%q) accepted an empty endpoint", s)
			}
		}
	})
}
