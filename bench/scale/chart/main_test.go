package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestRenderMarksMissedAndIncomplete(t *testing.T) {
	var a, b report
	for i, js := range []string{
		`{"hosts":1000,"results":[{"scenario":"stop","count":1000,"done":1000,"p50_ms":400,"p99_ms":450,"max_ms":454,"met":true}]}`,
		`{"hosts":20000,"results":[{"scenario":"stop","count":20000,"done":0,"met":false},{"scenario":"register","count":20000,"done":2254,"p50_ms":1,"p99_ms":2,"max_ms":3}]}`,
	} {
		if err := json.Unmarshal([]byte(js), []*report{&a, &b}[i]); err != nil {
			t.Fatal(err)
		}
	}
	var sb strings.Builder
	render(&sb, "t <&>", []report{a, b}, []string{"a.json", "b.json"})
	out := sb.String()
	for _, want := range []string{"<title>t &lt;&amp;&gt;</title>", "× none done", "2254 of 20000", `class="miss"`, "<svg"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Count(out, "<svg") != 2 {
		t.Errorf("want one chart per scenario (2), got %d", strings.Count(out, "<svg"))
	}
}
