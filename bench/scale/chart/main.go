// Command chart turns vigil-sim JSON reports (vigil-sim -json) into one
// self-contained HTML page: for each scenario, the p50, p99 and max latency
// against fleet size (inline SVG, no script, no external file), and a table
// of every figure with its load average.
//
//	go run ./bench/scale/chart -o scale.html run-1000.json run-5000.json ...
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"sort"
	"strings"
)

// report is the subset of vigil-sim's Report the chart reads.
type report struct {
	Hosts    int    `json:"hosts"`
	Clients  int    `json:"clients"`
	LeaseTTL string `json:"lease_ttl"`
	Spread   string `json:"spread"`
	Etcd     string `json:"etcd"`
	Cluster  int    `json:"cluster"`
	Results  []struct {
		Scenario string  `json:"scenario"`
		Count    int     `json:"count"`
		Done     int     `json:"done"`
		TotalMS  float64 `json:"total_ms"`
		P50MS    float64 `json:"p50_ms"`
		P99MS    float64 `json:"p99_ms"`
		MaxMS    float64 `json:"max_ms"`
		Target   string  `json:"target"`
		Met      bool    `json:"met"`
		Load1    float64 `json:"load1"`
	} `json:"results"`
	MaxRSSMB   float64 `json:"max_rss_mb"`
	CPUSeconds float64 `json:"cpu_seconds"`
	LoadStart  string  `json:"load_start"`
	Started    string  `json:"started"`
}

// point is one scenario's figures at one fleet size (the first result of
// that scenario in the report: later repeats run on a settled fleet).
type point struct {
	hosts        int
	p50, p99, mx float64
	done, count  int
	met          bool
	load         float64
	target       string
	file         string
}

func main() {
	out := flag.String("o", "scale.html", "output HTML file")
	title := flag.String("title", "Vigil control plane: latency against fleet size", "page title")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "chart: give one or more vigil-sim JSON reports")
		os.Exit(2)
	}
	var reps []report
	var files []string
	for _, f := range flag.Args() {
		b, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, "chart:", err)
			os.Exit(1)
		}
		var r report
		if err := json.Unmarshal(b, &r); err != nil {
			fmt.Fprintf(os.Stderr, "chart: %s is not a vigil-sim JSON report: %v\n", f, err)
			os.Exit(1)
		}
		reps = append(reps, r)
		files = append(files, f)
	}
	w, err := os.Create(*out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chart:", err)
		os.Exit(1)
	}
	render(w, *title, reps, files)
	if err := w.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "chart:", err)
		os.Exit(1)
	}
}

func series(reps []report, files []string) (order []string, by map[string][]point) {
	by = map[string][]point{}
	for i, r := range reps {
		seen := map[string]bool{}
		for _, res := range r.Results {
			if seen[res.Scenario] {
				continue
			}
			seen[res.Scenario] = true
			if _, ok := by[res.Scenario]; !ok {
				order = append(order, res.Scenario)
			}
			by[res.Scenario] = append(by[res.Scenario], point{hosts: r.Hosts, p50: res.P50MS, p99: res.P99MS, mx: res.MaxMS,
				done: res.Done, count: res.Count, met: res.Met, load: res.Load1, target: res.Target, file: files[i]})
		}
	}
	for _, ps := range by {
		sort.Slice(ps, func(i, j int) bool { return ps[i].hosts < ps[j].hosts })
	}
	return order, by
}

func render(w io.Writer, title string, reps []report, files []string) {
	order, by := series(reps, files)
	fmt.Fprintf(w, `<!doctype html><html><head><meta charset="utf-8"><title>%s</title>
<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
svg{background:#fff;border:1px solid #ccc;margin:0 1em 1em 0}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}.miss{color:#b00;font-weight:bold}</style></head><body>
<h1>%s</h1>
`, html.EscapeString(title), html.EscapeString(title))
	if len(reps) > 0 {
		r := reps[0]
		fmt.Fprintf(w, "<p>etcd: %s; %d client connections; lease TTL %s; registration spread of the first report %s. Each point is the first run of the scenario in its report; latencies in milliseconds from the write to the host's acknowledgement (see docs/scale.md).</p>\n",
			html.EscapeString(r.Etcd), r.Clients, html.EscapeString(r.LeaseTTL), html.EscapeString(r.Spread))
	}
	for _, sc := range order {
		fmt.Fprint(w, svgChart(sc, by[sc]))
	}
	fmt.Fprint(w, "<h2>Figures</h2><table><tr><th>scenario</th><th>hosts</th><th>done</th><th>p50 ms</th><th>p99 ms</th><th>max ms</th><th>target</th><th>met</th><th>load</th><th>report</th></tr>\n")
	for _, sc := range order {
		for _, p := range by[sc] {
			cls := ""
			if !p.met {
				cls = ` class="miss"`
			}
			fmt.Fprintf(w, "<tr><td>%s</td><td>%d</td><td>%d/%d</td><td>%.1f</td><td>%.1f</td><td>%.1f</td><td>%s</td><td%s>%v</td><td>%.1f</td><td>%s</td></tr>\n",
				html.EscapeString(sc), p.hosts, p.done, p.count, p.p50, p.p99, p.mx, html.EscapeString(p.target), cls, p.met, p.load, html.EscapeString(p.file))
		}
	}
	fmt.Fprint(w, "</table>\n<h2>Runs</h2><ul>\n")
	for i, r := range reps {
		fmt.Fprintf(w, "<li>%s: %d hosts, started %s, load average %s, simulator max RSS %.0f MiB, CPU %.1f s</li>\n",
			html.EscapeString(files[i]), r.Hosts, html.EscapeString(r.Started), html.EscapeString(r.LoadStart), r.MaxRSSMB, r.CPUSeconds)
	}
	fmt.Fprint(w, "</ul></body></html>\n")
}

// svgChart draws p50, p99 and max against hosts, x on a log scale.
func svgChart(name string, ps []point) string {
	const W, H, L, R, T, B = 520, 300, 70, 20, 30, 45
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-size="11">`, W, H, W, H)
	fmt.Fprintf(&b, `<text x="%d" y="18" font-size="14" font-weight="bold">%s</text>`, L, html.EscapeString(name))
	if len(ps) == 0 {
		b.WriteString("</svg>")
		return b.String()
	}
	xmin, xmax := float64(ps[0].hosts), float64(ps[len(ps)-1].hosts)
	if xmax <= xmin {
		xmin, xmax = xmin/2, xmax*2
	}
	ymax := 0.0
	for _, p := range ps {
		ymax = math.Max(ymax, p.mx)
	}
	ymax = niceCeil(ymax)
	lx := func(h float64) float64 {
		return L + (math.Log(h)-math.Log(xmin))/(math.Log(xmax)-math.Log(xmin))*(W-L-R)
	}
	ly := func(v float64) float64 { return H - B - v/ymax*(H-T-B) }
	// axes and grid
	for i := 0; i <= 4; i++ {
		v := ymax * float64(i) / 4
		y := ly(v)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`, L, y, W-R, y, L-5, y+4, fmtMS(v))
	}
	for _, p := range ps {
		x := lx(float64(p.hosts))
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/><text x="%.1f" y="%d" text-anchor="middle">%d</text>`, x, T, x, H-B, x, H-B+14, p.hosts)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">hosts (log scale)</text>`, (L+W-R)/2, H-8)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#444"/><line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#444"/>`, L, H-B, W-R, H-B, L, T, L, H-B)
	lines := []struct {
		label, color string
		v            func(point) float64
	}{
		{"p50", "#1f77b4", func(p point) float64 { return p.p50 }},
		{"p99", "#ff7f0e", func(p point) float64 { return p.p99 }},
		{"max", "#d62728", func(p point) float64 { return p.mx }},
	}
	for k, ln := range lines {
		var pts []string
		for _, p := range ps {
			if p.done < p.count {
				continue // incomplete: a marker only, no line through it
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", lx(float64(p.hosts)), ly(ln.v(p))))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, ln.color, strings.Join(pts, " "))
		for _, p := range ps {
			if p.done == 0 {
				if k == 0 {
					x := lx(float64(p.hosts))
					fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#b00" font-weight="bold">× none done</text>`, x, T+12)
				}
				continue
			}
			fill := ln.color
			if !p.met || p.done < p.count {
				fill = "#fff"
			}
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s" stroke="%s"><title>%s %d hosts: %.1f ms (load %.1f, %d of %d done)</title></circle>`,
				lx(float64(p.hosts)), ly(ln.v(p)), fill, ln.color, ln.label, p.hosts, ln.v(p), p.load, p.done, p.count)
			if k == 2 && p.done < p.count {
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end" fill="#b00">%d of %d</text>`, lx(float64(p.hosts))-6, ly(ln.v(p))+4, p.done, p.count)
			}
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="%s">%s</text>`, W-R-110+k*38, T-12, ln.color, ln.label)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#666">hollow: target missed; no line: incomplete</text>`, L+40, T-12)
	b.WriteString("</svg>\n")
	return b.String()
}

func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func fmtMS(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%gs", math.Round(v/100)/10)
	}
	return fmt.Sprintf("%.0fms", v)
}
