package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-hids/vigil/host/sink"
	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/pluginpb"
)

func TestAccountingExactUnderConcurrency(t *testing.T) {
	clock := newFakeClock()
	s := &memSink{name: "mem"}
	cfg := Config{Limits: Limits{QueueSize: 1024, Rate: 5000, Burst: 3000}}
	s.failEvery = 7
	p := newPipeline(t, cfg, clock, s)
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	const plugins, batches, per = 4, 300, 64
	stop := make(chan struct{})
	var checker sync.WaitGroup
	checker.Add(1)
	go func() { // every snapshot balances, not only the last one
		defer checker.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, st := range p.Stats() {
				if err := imbalance(st); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for n := range plugins {
		in := p.Register(fmt.Sprintf("p%d", n), "1")
		wg.Add(1)
		go func() {
			defer wg.Done()
			var emitted, pdropped uint64
			for b := range batches {
				if b%10 == 9 { // the plugin dropped a batch itself
					pdropped += per
					emitted += per
				}
				emitted += per
				bt := batch(b*per, per, b%5 == 0, emitted+3) // 3 in the plugin's partial batch
				bt.DroppedTotal = map[string]uint64{sdk.DropBufferFull: pdropped}
				bt.Counters = map[string]uint64{"kernel_lost": uint64(b)}
				in.Submit(bt)
				clock.Advance(time.Millisecond)
			}
			// The plugin's final batch after its clean shutdown carries
			// the partial batch.
			last := batch(batches*per, 3, false, emitted+3)
			last.DroppedTotal = map[string]uint64{sdk.DropBufferFull: pdropped}
			in.Submit(last)
		}()
	}
	wg.Wait()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	close(stop)
	checker.Wait()
	perPlugin := map[string]uint64{}
	for _, g := range s.got() {
		perPlugin[g.plugin]++
	}
	var sinkErrors, limited uint64
	for _, st := range p.Stats() {
		balanced(t, st)
		if st.Queued != 0 || st.InPlugin != 0 {
			t.Errorf("%s: queued %d in_plugin %d after close", st.Plugin, st.Queued, st.InPlugin)
		}
		if st.Emitted != batches*per+batches/10*per+3 {
			t.Errorf("%s: emitted %d", st.Plugin, st.Emitted)
		}
		if st.Dropped[DropPluginBufferFull] != batches/10*per {
			t.Errorf("%s: plugin_buffer_full %d", st.Plugin, st.Dropped[DropPluginBufferFull])
		}
		if st.Delivered != perPlugin[st.Plugin] {
			t.Errorf("%s: delivered %d, sink got %d", st.Plugin, st.Delivered, perPlugin[st.Plugin])
		}
		if st.Counters["kernel_lost"] != batches-1 {
			t.Errorf("%s: counters %v", st.Plugin, st.Counters)
		}
		sinkErrors += st.Dropped[DropSinkError]
		limited += st.Dropped[DropRateLimited]
	}
	if sinkErrors == 0 || limited == 0 {
		t.Errorf("sink_error %d rate_limited %d: the test did not exercise both", sinkErrors, limited)
	}
}

func TestQueueFull(t *testing.T) {
	s := &memSink{name: "mem"}
	p := newPipeline(t, Config{Limits: Limits{QueueSize: 1024}}, newFakeClock(), s)
	in := p.Register("procmon", "1")
	// The writer is not started, so everything submitted stays queued.
	in.Submit(batch(0, 600, false, 600))
	in.Submit(batch(600, 600, false, 1200))
	in.Submit(batch(1200, 10, false, 1210))
	st := statsOf(t, p, "procmon")
	balanced(t, st)
	if st.Queued != 1024 || st.Dropped[DropQueueFull] != 186 {
		t.Fatalf("queued %d queue_full %d, want 1024 and 186", st.Queued, st.Dropped[DropQueueFull])
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	// The tail of the second batch was cut; the third did not fit at all.
	if g := indexes(s.got(), false); !slices.Equal(g, seq(0, 1024)) {
		t.Fatalf("sink got %d events %v…, want 0..1023", len(g), g[:min(len(g), 5)])
	}
	st = statsOf(t, p, "procmon")
	balanced(t, st)
	if st.Delivered != 1024 {
		t.Fatalf("delivered %d", st.Delivered)
	}
}

func TestRateLimit(t *testing.T) {
	clock := newFakeClock()
	s := &memSink{name: "mem"}
	p := newPipeline(t, Config{Limits: Limits{Rate: 1000, Burst: 1000, AlertRate: 10, AlertBurst: 20}}, clock, s)
	in := p.Register("netmon", "1")
	steps := []struct {
		name        string
		advance     time.Duration
		b           *pluginpb.EventBatch
		wantLimited uint64 // cumulative
	}{
		{name: "burst then tail cut", b: batch(0, 1500, false, 1500), wantLimited: 500},
		{name: "empty bucket", b: batch(1500, 10, false, 1510), wantLimited: 510},
		{name: "quarter second refills 250", advance: 250 * time.Millisecond, b: batch(1510, 400, false, 1910), wantLimited: 660},
		{name: "alerts have their own bucket", b: batch(0, 15, true, 1925), wantLimited: 660},
		{name: "alert bucket runs out too", b: batch(15, 10, true, 1935), wantLimited: 665},
		{name: "long idle refills only the burst", advance: time.Hour, b: batch(1910, 1200, false, 3135), wantLimited: 865},
	}
	for _, st := range steps {
		clock.Advance(st.advance)
		in.Submit(st.b)
		got := statsOf(t, p, "netmon")
		balanced(t, got)
		if got.Dropped[DropRateLimited] != st.wantLimited {
			t.Fatalf("%s: rate_limited %d, want %d", st.name, got.Dropped[DropRateLimited], st.wantLimited)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	want := append(append(seq(0, 1000), seq(1510, 1760)...), seq(1910, 2910)...)
	if g := indexes(s.got(), false); !slices.Equal(g, want) {
		t.Fatalf("telemetry delivered %d events, want the heads of the batches (%d)", len(g), len(want))
	}
	if g := indexes(s.got(), true); !slices.Equal(g, seq(0, 20)) {
		t.Fatalf("alerts delivered %v, want 0..19", g)
	}
}

func TestAlertsFirstAndFair(t *testing.T) {
	s := &memSink{name: "mem"}
	p := newPipeline(t, Config{}, newFakeClock(), s)
	a, b := p.Register("a", "1"), p.Register("b", "1")
	a.Submit(batch(0, 100, false, 100))
	a.Submit(batch(100, 100, false, 200))
	a.Submit(batch(200, 100, false, 300))
	b.Submit(batch(0, 50, false, 50))
	b.Submit(batch(50, 50, false, 100))
	b.Submit(batch(0, 7, true, 107))
	a.Submit(batch(0, 3, true, 303))
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	order := s.writesByPlugin()
	// Both plugins' alerts go first; then each round writes one telemetry
	// batch of each plugin until b has none left.
	if len(order) != 7 || !samePair(order[0:2], "a/alert", "b/alert") || !samePair(order[2:4], "a/tele", "b/tele") ||
		!samePair(order[4:6], "a/tele", "b/tele") || order[6] != "a/tele" {
		t.Fatalf("write order %v", order)
	}
}

// writesByPlugin names each write as plugin/kind, in order.
func (s *memSink) writesByPlugin() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	k := 0
	for _, n := range s.writes {
		g := s.events[k]
		kind := "tele"
		if g.alert {
			kind = "alert"
		}
		out = append(out, g.plugin+"/"+kind)
		k += n
	}
	return out
}

func samePair(w []string, x, y string) bool {
	return (w[0] == x && w[1] == y) || (w[0] == y && w[1] == x)
}

func TestAlertEvictsOldestTelemetry(t *testing.T) {
	s := &memSink{name: "mem"}
	p := newPipeline(t, Config{Limits: Limits{QueueSize: 1024}}, newFakeClock(), s)
	in := p.Register("procmon", "1")
	in.Submit(batch(0, 512, false, 512))
	in.Submit(batch(512, 512, false, 1024))
	in.Submit(batch(0, 100, true, 1124)) // evicts telemetry 0..99
	st := statsOf(t, p, "procmon")
	balanced(t, st)
	if st.Queued != 1024 || st.Dropped[DropQueueFull] != 100 {
		t.Fatalf("queued %d queue_full %d, want 1024 and 100", st.Queued, st.Dropped[DropQueueFull])
	}
	// A flood of alerts evicts all telemetry, then alerts drop last.
	in.Submit(batch(100, 1000, true, 2124))
	st = statsOf(t, p, "procmon")
	balanced(t, st)
	if st.Queued != 1024 || st.Dropped[DropQueueFull] != 100+924+76 {
		t.Fatalf("queued %d queue_full %d, want 1024 and 1100", st.Queued, st.Dropped[DropQueueFull])
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if g := indexes(s.got(), true); !slices.Equal(g, seq(0, 1024)) {
		t.Fatalf("alerts delivered %d, want 0..1023", len(g))
	}
	if g := indexes(s.got(), false); len(g) != 0 {
		t.Fatalf("telemetry delivered %v, want none", g)
	}

	// Partial eviction keeps the rest of a telemetry batch, in order.
	s2 := &memSink{name: "mem"}
	p2 := newPipeline(t, Config{Limits: Limits{QueueSize: 1024}}, newFakeClock(), s2)
	in2 := p2.Register("procmon", "1")
	in2.Submit(batch(0, 1024, false, 1024))
	in2.Submit(batch(0, 10, true, 1034))
	if err := p2.Close(); err != nil {
		t.Fatal(err)
	}
	g := s2.got()
	if !slices.Equal(indexes(g[:10], true), seq(0, 10)) || !slices.Equal(indexes(g[10:], false), seq(10, 1024)) {
		t.Fatalf("after partial eviction got %d events, want alerts 0..9 then telemetry 10..1023", len(g))
	}
}

func TestRestartKeepsRunningTotals(t *testing.T) {
	s := &memSink{name: "mem"}
	p := newPipeline(t, Config{}, newFakeClock(), s)
	in := p.Register("procmon", "1")
	in.Restarted() // the supervisor calls it before every process, the first too
	first := batch(0, 80, false, 100)
	first.DroppedTotal = map[string]uint64{sdk.DropBufferFull: 10}
	first.Counters = map[string]uint64{"kernel_events_lost": 4}
	in.Submit(first)
	st := statsOf(t, p, "procmon")
	if st.InPlugin != 10 {
		t.Fatalf("in_plugin %d, want 10", st.InPlugin)
	}
	in.Restarted() // the process crashed holding 10 events
	second := batch(80, 50, false, 50)
	second.DroppedTotal = map[string]uint64{sdk.DropBufferFull: 0}
	in.Submit(second)
	third := batch(130, 20, false, 75)
	third.DroppedTotal = map[string]uint64{sdk.DropBufferFull: 5}
	in.Submit(third)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	st = statsOf(t, p, "procmon")
	balanced(t, st)
	want := PluginStats{Plugin: "procmon", Version: "1", Emitted: 175, Received: 150, Delivered: 150,
		Dropped: map[string]uint64{DropPluginBufferFull: 15, DropPluginExit: 10}}
	if st.Emitted != want.Emitted || st.Received != want.Received || st.Delivered != want.Delivered ||
		fmt.Sprint(st.Dropped) != fmt.Sprint(want.Dropped) {
		t.Fatalf("stats %+v\nwant  %+v", st, want)
	}
	if len(st.Counters) != 0 {
		t.Fatalf("counters %v: the new process reported none", st.Counters)
	}
}

func TestSinkErrorsCounted(t *testing.T) {
	tests := []struct {
		name  string
		setup func(bad *memSink)
	}{
		{name: "error", setup: func(bad *memSink) { bad.fail = errors.New("no space left on device") }},
		{name: "panic", setup: func(bad *memSink) { bad.panic = true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good, bad := &memSink{name: "good"}, &memSink{name: "bad"}
			bad.set(tt.setup)
			p := newPipeline(t, Config{}, newFakeClock(), good, bad)
			in := p.Register("procmon", "1")
			in.Submit(batch(0, 30, false, 30))
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			st := statsOf(t, p, "procmon")
			balanced(t, st)
			if st.Dropped[DropSinkError] != 30 || st.Delivered != 0 {
				t.Fatalf("sink_error %d delivered %d, want 30 and 0", st.Dropped[DropSinkError], st.Delivered)
			}
			if len(good.got()) != 30 {
				t.Fatalf("the good sink got %d events, want 30", len(good.got()))
			}
		})
	}
}

func TestMalformedRecords(t *testing.T) {
	s := &memSink{name: "mem"}
	p := newPipeline(t, Config{}, newFakeClock(), s)
	in := p.Register("procmon", "1")
	b := batch(0, 3, false, 5)
	b.Events = append(b.Events, 0x05, 0x0a) // a record cut short
	b.Count = 5                             // and a count that lies
	in.Submit(b)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	st := statsOf(t, p, "procmon")
	balanced(t, st)
	if st.Delivered != 3 || st.Dropped[DropMalformed] != 2 {
		t.Fatalf("delivered %d malformed %d, want 3 and 2", st.Delivered, st.Dropped[DropMalformed])
	}
}

func TestCloseTimeoutAndSubmitAfterClose(t *testing.T) {
	s := &memSink{name: "stuck", block: true}
	p := newPipeline(t, Config{CloseTimeout: 20 * time.Millisecond}, newFakeClock(), s)
	in := p.Register("procmon", "1")
	in.Submit(batch(0, 10, false, 10))
	in.Submit(batch(10, 10, false, 20))
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-p.Ready()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	in.Submit(batch(20, 5, false, 25))
	st := statsOf(t, p, "procmon")
	balanced(t, st)
	if st.Queued != 0 || st.Dropped[DropSinkError]+st.Dropped[DropShutdown] != 25 || st.Dropped[DropShutdown] < 5 {
		t.Fatalf("after close: queued %d dropped %v", st.Queued, st.Dropped)
	}
	if err := p.Start(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close: %v", err)
	}
}

func TestContextCancelDrains(t *testing.T) {
	s := &memSink{name: "mem"}
	p := newPipeline(t, Config{}, newFakeClock(), s)
	in := p.Register("procmon", "1")
	ctx, cancel := context.WithCancel(context.Background())
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	in.Submit(batch(0, 10, false, 10))
	cancel()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	st := statsOf(t, p, "procmon")
	balanced(t, st)
	if st.Delivered+st.Dropped[DropShutdown] != 10 {
		t.Fatalf("stats %+v", st)
	}
}

func TestHostEmitter(t *testing.T) {
	s := &memSink{name: "mem"}
	clock := newFakeClock()
	p := newPipeline(t, Config{}, clock, s)
	h := p.HostEmitter("0.3.0")
	h.Counter("heartbeats").Add(2)
	for i := range 3 {
		if err := h.Emit(&sdk.Event{Type: "heartbeat", Fields: []sdk.Field{sdk.Int("i", int64(i))}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Emit(&sdk.Event{Type: "plugin_quarantined", Alert: true, Severity: sdk.SevCritical}); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	st := statsOf(t, p, HostPlugin)
	balanced(t, st)
	if st.Emitted != 4 || st.Delivered != 4 || st.Version != "0.3.0" || st.Counters["heartbeats"] != 2 {
		t.Fatalf("host stats %+v", st)
	}
	g := s.got()
	if len(g) != 4 || !g[0].alert || g[0].plugin != HostPlugin {
		t.Fatalf("sink got %+v, want the alert first", g)
	}
}

func TestMetrics(t *testing.T) {
	p := newPipeline(t, Config{Limits: Limits{Rate: 1, Burst: 5}}, newFakeClock(), &memSink{name: "mem"})
	in := p.Register("procmon", "1")
	in.Submit(batch(0, 8, false, 8))
	reg := prometheus.NewRegistry()
	if err := p.RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				if l.GetName() != "plugin" && l.GetName() != "reason" {
					t.Errorf("%s has label %q; only plugin and reason are allowed", mf.GetName(), l.GetName())
				}
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			values[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	for key, want := range map[string]float64{
		"vigil_host_events_emitted_total,plugin=procmon":                           8,
		"vigil_host_events_queued,plugin=procmon":                                  5,
		"vigil_host_events_dropped_total,plugin=procmon,reason=rate_limited":       3,
		"vigil_host_events_dropped_total,plugin=procmon,reason=queue_full":         0,
		"vigil_host_events_dropped_total,plugin=procmon,reason=plugin_buffer_full": 0,
	} {
		if got, ok := values[key]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", key, got, ok, want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string
	}{
		{name: "defaults", cfg: Config{}},
		{name: "small queue", cfg: Config{Limits: Limits{QueueSize: 12}}, want: []string{"pipeline.queue_size must be between 1024 and 16777216 (got 12)"}},
		{name: "override", cfg: Config{Plugins: map[string]Limits{"procmon": {Rate: -5}, "netmon": {Burst: 1}}},
			want: []string{"pipeline.plugins.procmon.rate must be between 1 and 10000000 (got -5)"}},
		{name: "several", cfg: Config{CloseTimeout: time.Hour, Limits: Limits{AlertBurst: -1}},
			want: []string{"pipeline.alert_burst must be between 1 and 100000000 (got -1)", "pipeline.close_timeout must be between 10ms and 5m0s (got 1h0m0s)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			var got []string
			if err != nil {
				got = strings.Split(err.Error(), "\n")
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %q\nwant %q", got, tt.want)
			}
		})
	}
	c := Config{Limits: Limits{Rate: 100}, Plugins: map[string]Limits{"procmon": {Burst: 7}}}
	if l := c.For("procmon"); l.Rate != 100 || l.Burst != 7 || l.QueueSize != DefaultQueueSize {
		t.Fatalf("For(procmon) = %+v", l)
	}
}

func TestEndToEndFileSink(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.ndjson")
	fs, err := sink.NewFile(sink.FileConfig{Path: path, MaxSizeMB: 64}, "h1")
	if err != nil {
		t.Fatal(err)
	}
	p := newPipeline(t, Config{Limits: Limits{Rate: 1000, Burst: 1000}}, newFakeClock(), fs)
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	in := p.Register("procmon", "")
	in.SetVersion("0.1.0") // as the supervisor does once it has the plugin's Info
	in.Submit(batch(0, 512, false, 512))
	in.Submit(batch(512, 512, false, 1024)) // 488 over the burst
	in.Submit(batch(0, 2, true, 1026))
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for l := range bytes.Lines(data) {
		var m struct {
			Plugin        string `json:"plugin"`
			PluginVersion string `json:"plugin_version"`
		}
		if err := json.Unmarshal(l, &m); err != nil || m.Plugin != "procmon" || m.PluginVersion != "0.1.0" {
			t.Fatalf("line %d %q: %v", n, l, err)
		}
		n++
	}
	st := statsOf(t, p, "procmon")
	balanced(t, st)
	if st.Delivered != 1002 || n != st.Delivered || st.Dropped[DropRateLimited] != 24 {
		t.Fatalf("file has %d lines; stats %+v", n, st)
	}
}

// FuzzSubmit feeds arbitrary batches, as a buggy or hostile plugin could
// send them, through the pipeline into the real NDJSON writer: the books
// always balance, every delivered event is one valid JSON line, and
// nothing is left queued after Close.
func FuzzSubmit(f *testing.F) {
	f.Add(batch(0, 3, false, 3).Events, uint16(3), false, uint32(3), uint32(0))
	f.Add(batch(0, 600, true, 600).Events, uint16(600), true, uint32(1), uint32(5))
	f.Add([]byte{0x05, 0x0a, 0x01}, uint16(2), false, uint32(0), uint32(0))
	f.Fuzz(func(t *testing.T, events []byte, count uint16, alerts bool, emitted, pdropped uint32) {
		var buf bytes.Buffer
		p, err := New(Config{Limits: Limits{QueueSize: 1024, Rate: 100, Burst: 700, AlertBurst: 900}},
			[]sink.Sink{sink.NewWriter("buf", &buf, "h")}, nil, newFakeClock())
		if err != nil {
			t.Fatal(err)
		}
		in := p.Register("fuzz", "1")
		for i := range 3 { // fill the queue and the buckets, evict, restart
			in.Submit(&pluginpb.EventBatch{Count: uint32(count), Alerts: alerts != (i == 1), Events: events,
				EmittedTotal: uint64(emitted), DroppedTotal: map[string]uint64{sdk.DropBufferFull: uint64(pdropped)}})
			if i == 1 {
				in.Restarted()
			}
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		st := statsOf(t, p, "fuzz")
		balanced(t, st)
		if st.Queued != 0 {
			t.Fatalf("queued %d after Close", st.Queued)
		}
		var lines uint64
		for l := range bytes.Lines(buf.Bytes()) {
			if !json.Valid(l) {
				t.Fatalf("invalid JSON line %q", l)
			}
			lines++
		}
		if lines != st.Delivered {
			t.Fatalf("%d lines for %d delivered", lines, st.Delivered)
		}
	})
}
