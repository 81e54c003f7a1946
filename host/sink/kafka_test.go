package sink

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sys/unix"

	"github.com/vigil-hids/vigil/sdk"
)

// failAfter bounds a wait; it is a failure deadline, not a timing
// assertion.
const failAfter = 60 * time.Second

func kafkaBatch(plugin string, first, n int) *Batch {
	return batchOf(plugin, n, func(i int) *sdk.Event {
		return &sdk.Event{Type: "exec", Time: time.Unix(1764100000, int64(first+i)), Severity: sdk.SevInfo, Fields: []sdk.Field{
			sdk.Int("seq", int64(first+i)), sdk.String("exe", "/usr/bin/ls"), sdk.String("cmdline", "ls -la /var/log"),
		}}
	})
}

// ndjsonOf is what the file sink writes for b.
func ndjsonOf(t *testing.T, host string, b *Batch) []string {
	t.Helper()
	var out bytes.Buffer
	if err := NewWriter("buf", &out, host).Write(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(out.String(), "\n")
	return lines[:len(lines)-1] // the empty string after the last newline
}

func checkCounts(t *testing.T, c Counts) {
	t.Helper()
	var lost uint64
	for _, n := range c.Lost {
		lost += n
	}
	if c.Accepted != c.Delivered+c.Pending+lost {
		t.Fatalf("counts not exact: accepted %d != delivered %d + pending %d + lost %d (%v)", c.Accepted, c.Delivered, c.Pending, lost, c.Lost)
	}
}

func newCluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(3, "vigil-events")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestKafkaDeliversNDJSONKeyedByHost(t *testing.T) {
	c := newCluster(t)
	hosts := []string{"h1", "h2", "web-3"}
	want := map[string][]string{}
	for _, h := range hosts {
		s, err := NewKafka(KafkaConfig{Brokers: c.ListenAddrs(), Topic: "vigil-events"}, h, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			b := kafkaBatch("procmon", i*50, 50)
			want[h] = append(want[h], ndjsonOf(t, h, b)...)
			if err := s.Write(context.Background(), b); err != nil {
				t.Fatal(err)
			}
			checkCounts(t, s.Counts())
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		got := s.Counts()
		checkCounts(t, got)
		if got.Accepted != 500 || got.Delivered != 500 || got.Pending != 0 || len(got.Lost) != 0 {
			t.Fatalf("%s: counts %+v, want 500 accepted and delivered", h, got)
		}
		if err := s.Write(context.Background(), kafkaBatch("procmon", 0, 1)); !errors.Is(err, ErrClosed) {
			t.Fatalf("Write after Close: %v, want ErrClosed", err)
		}
	}

	cons, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics("vigil-events"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	ctx, cancel := context.WithTimeout(context.Background(), failAfter)
	defer cancel()
	got := map[string][]string{}
	partOf := map[string]int32{}
	for n := 0; n < 1500; {
		fs := cons.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consumed %d of 1500 records: %v", n, err)
		}
		fs.EachError(func(topic string, p int32, err error) { t.Fatalf("fetch %s/%d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			h := string(r.Key)
			if p, ok := partOf[h]; ok && p != r.Partition {
				t.Fatalf("host %s in partitions %d and %d", h, p, r.Partition)
			}
			partOf[h] = r.Partition
			got[h] = append(got[h], string(r.Value))
			n++
		})
	}
	for _, h := range hosts {
		if len(got[h]) != len(want[h]) {
			t.Fatalf("%s: %d records, want %d", h, len(got[h]), len(want[h]))
		}
		for i := range want[h] {
			if got[h][i] != want[h][i] {
				t.Fatalf("%s record %d:\n got %q\nwant %q", h, i, got[h][i], want[h][i])
			}
		}
	}
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestKafkaUnreachableFillsBufferThenFails(t *testing.T) {
	t.Run("unreachable", func(t *testing.T) { testKafkaFillsBuffer(t, false) })
	t.Run("stopped", func(t *testing.T) { testKafkaFillsBuffer(t, true) })
}

// testKafkaFillsBuffer writes to brokers that are away until the buffer is
// full; with stop, the cluster first takes a batch, then stops.
func testKafkaFillsBuffer(t *testing.T, stop bool) {
	brokers := []string{deadAddr(t)}
	var cl *kfake.Cluster
	if stop {
		cl = newCluster(t)
		brokers = cl.ListenAddrs()
	}
	s, err := NewKafka(KafkaConfig{Brokers: brokers, Topic: "vigil-events", BufferMB: 1, RecordTimeout: time.Hour}, "h1", nil)
	if err != nil {
		t.Fatal(err)
	}
	b := kafkaBatch("procmon", 0, 64)
	var before uint64
	if stop {
		if err := s.Write(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		waitCounts(t, s, func(c Counts) bool { return c.Delivered == 64 })
		cl.Close()
		before = 64
	}
	ok := 0
	for {
		err := s.Write(context.Background(), b)
		checkCounts(t, s.Counts())
		if err != nil {
			if !errors.Is(err, ErrBufferFull) {
				t.Fatalf("Write: %v, want ErrBufferFull", err)
			}
			break
		}
		ok++
		if ok > 10000 {
			t.Fatal("the 1 MiB buffer never filled")
		}
	}
	c := s.Counts()
	if ok == 0 || c.Accepted != before+uint64(ok*64) || c.Delivered != before {
		t.Fatalf("after %d writes: %+v", ok, c)
	}
	// Still full: every further batch fails at once, taking nothing.
	for range 3 {
		if err := s.Write(context.Background(), b); !errors.Is(err, ErrBufferFull) {
			t.Fatalf("Write on a full buffer: %v", err)
		}
	}
	if got := s.Counts(); got.Accepted != c.Accepted {
		t.Fatalf("a refused batch was counted: %+v", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	c = s.Counts()
	checkCounts(t, c)
	if c.Pending != 0 || c.Lost["shutdown"] != c.Accepted-before {
		t.Fatalf("after Close: %+v, want all %d undelivered lost to shutdown", c, c.Accepted-before)
	}
}

func TestKafkaRecordTimeoutIsCountedLost(t *testing.T) {
	s, err := NewKafka(KafkaConfig{Brokers: []string{deadAddr(t)}, Topic: "vigil-events", RecordTimeout: time.Second}, "h1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 4 {
		if err := s.Write(context.Background(), kafkaBatch("procmon", i*16, 16)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(failAfter)
	for {
		c := s.Counts()
		checkCounts(t, c)
		if c.Pending == 0 {
			if c.Lost["timeout"] != 64 || c.LastError == "" {
				t.Fatalf("counts %+v, want 64 lost to timeout", c)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("records never timed out: %+v", c)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestKafkaConfigValidate(t *testing.T) {
	ok := KafkaConfig{Brokers: []string{"k1:9092", "[::1]:9093"}, Topic: "vigil.events_v1-x"}
	tests := []struct {
		name string
		edit func(*KafkaConfig)
		want string
	}{
		{name: "defaults", edit: func(*KafkaConfig) {}},
		{name: "full", edit: func(c *KafkaConfig) {
			c.TLS = &KafkaTLS{CAFile: "/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem"}
			c.SASL = &KafkaSASL{Mechanism: "SCRAM-SHA-512", Username: "u", Password: "p"}
			c.Compression, c.BufferMB, c.RecordTimeout = "lz4", 1024, time.Minute
		}},
		{name: "no brokers", edit: func(c *KafkaConfig) { c.Brokers = nil }, want: "sinks.kafka.brokers must list at least one broker as host:port"},
		{name: "no port", edit: func(c *KafkaConfig) { c.Brokers = []string{"k1"} }, want: `sinks.kafka.brokers[0] "k1": want host:port`},
		{name: "bad port", edit: func(c *KafkaConfig) { c.Brokers[1] = "k2:99999" }, want: `sinks.kafka.brokers[1] "k2:99999": port must be between 1 and 65535 (got "99999")`},
		{name: "empty host", edit: func(c *KafkaConfig) { c.Brokers = []string{":9092"} }, want: `sinks.kafka.brokers[0] ":9092": empty host`},
		{name: "no topic", edit: func(c *KafkaConfig) { c.Topic = "" }, want: "sinks.kafka.topic: must be set"},
		{name: "topic char", edit: func(c *KafkaConfig) { c.Topic = "a/b" }, want: `sinks.kafka.topic: "a/b": character '/' at 1 is not one of [a-zA-Z0-9._-]`},
		{name: "topic dot", edit: func(c *KafkaConfig) { c.Topic = ".." }, want: `sinks.kafka.topic: ".." is not a valid topic name`},
		{name: "topic long", edit: func(c *KafkaConfig) { c.Topic = strings.Repeat("t", 250) }, want: "sinks.kafka.topic: must be at most 249 characters (got 250)"},
		{name: "topic 249", edit: func(c *KafkaConfig) { c.Topic = strings.Repeat("t", 249) }},
		{name: "buffer", edit: func(c *KafkaConfig) { c.BufferMB = 2000 }, want: "sinks.kafka.buffer_mb must be between 1 and 1024 (got 2000)"},
		{name: "buffer negative", edit: func(c *KafkaConfig) { c.BufferMB = -1 }, want: "sinks.kafka.buffer_mb must be between 1 and 1024 (got -1)"},
		{name: "compression", edit: func(c *KafkaConfig) { c.Compression = "brotli" }, want: `sinks.kafka.compression must be one of none, gzip, snappy, lz4, zstd (got "brotli")`},
		{name: "timeout", edit: func(c *KafkaConfig) { c.RecordTimeout = time.Millisecond }, want: "sinks.kafka.record_timeout must be between 1s and 1h0m0s (got 1ms)"},
		{name: "tls half", edit: func(c *KafkaConfig) { c.TLS = &KafkaTLS{CertFile: "/c.pem"} }, want: `sinks.kafka.tls: cert_file and key_file must be set together (got cert_file "/c.pem", key_file "")`},
		{name: "sasl mech", edit: func(c *KafkaConfig) { c.SASL = &KafkaSASL{Mechanism: "GSSAPI", Username: "u", Password: "p"} }, want: `sinks.kafka.sasl.mechanism must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (got "GSSAPI")`},
		{name: "sasl user", edit: func(c *KafkaConfig) { c.SASL = &KafkaSASL{Mechanism: "PLAIN", Password: "p"} }, want: "sinks.kafka.sasl.username must be set"},
		{name: "sasl no password", edit: func(c *KafkaConfig) { c.SASL = &KafkaSASL{Mechanism: "PLAIN", Username: "u"} }, want: "sinks.kafka.sasl: set password or password_file"},
		{name: "sasl both", edit: func(c *KafkaConfig) {
			c.SASL = &KafkaSASL{Mechanism: "PLAIN", Username: "u", Password: "p", PasswordFile: "/etc/vigil/kafka.pw"}
		}, want: "sinks.kafka.sasl: set password or password_file, not both"},
		{name: "two errors", edit: func(c *KafkaConfig) { c.Topic, c.BufferMB = "", 4096 }, want: "sinks.kafka.topic: must be set\nsinks.kafka.buffer_mb must be between 1 and 1024 (got 4096)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			cfg.Brokers = append([]string(nil), ok.Brokers...)
			tt.edit(&cfg)
			got := ""
			if err := cfg.Validate(); err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestKafkaSASLPasswordFile: a SCRAM password read from a file logs in to
// a cluster that requires it; a wrong one is never delivered to; a file
// others may read, or an empty one, is refused naming it.
func TestKafkaSASLPasswordFile(t *testing.T) {
	c := newCluster(t, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "vigil", "s3cret"))
	dir := t.TempDir()
	file := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := func(pwFile string) KafkaConfig {
		return KafkaConfig{Brokers: c.ListenAddrs(), Topic: "vigil-events", RecordTimeout: 5 * time.Second,
			SASL: &KafkaSASL{Mechanism: "SCRAM-SHA-256", Username: "vigil", PasswordFile: pwFile}}
	}
	s, err := NewKafka(cfg(file("good", "s3cret\n", 0o600)), "h1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Write(context.Background(), kafkaBatch("procmon", 0, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := s.Counts(); got.Delivered != 10 {
		t.Fatalf("with the password from the file: %+v", got)
	}

	s, err = NewKafka(cfg(file("wrong", "guess\n", 0o600)), "h1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Write(context.Background(), kafkaBatch("procmon", 0, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := s.Counts(); got.Delivered != 0 || got.Accepted != 10 || got.Pending != 0 {
		t.Fatalf("with a wrong password: %+v", got)
	}

	for _, tc := range []struct{ name, content, want string }{
		{"open", "s3cret\n", "readable by group or others"},
		{"empty", "\n", "is empty"},
		{"long", strings.Repeat("x", 5000), "longer than 4096 bytes"},
	} {
		mode := os.FileMode(0o600)
		if tc.name == "open" {
			mode = 0o644
		}
		p := file(tc.name, tc.content, mode)
		if _, err := NewKafka(cfg(p), "h1", nil); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s password file: %v, want %q naming %s", tc.name, err, tc.want, p)
		}
	}
	// A FIFO (nobody writing it) is refused at once instead of hanging
	// the start; so is a directory.
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fifo, dir} {
		if _, err := NewKafka(cfg(p), "h1", nil); err == nil || !strings.Contains(err.Error(), "is not a regular file") || !strings.Contains(err.Error(), p) {
			t.Errorf("password file %s: %v, want refused as not a regular file", p, err)
		}
	}
}

func TestKafkaTLSFileErrors(t *testing.T) {
	_, err := NewKafka(KafkaConfig{Brokers: []string{"k1:9092"}, Topic: "t", TLS: &KafkaTLS{CAFile: "/nonexistent/ca.pem"}}, "h1", nil)
	if err == nil || !strings.Contains(err.Error(), "sinks.kafka.tls.ca_file") {
		t.Fatalf("NewKafka with a missing CA file: %v", err)
	}
}

func TestKafkaRejectedIsCountedLost(t *testing.T) {
	// The broker takes no batch over 100 bytes: every record batch is
	// refused with MESSAGE_TOO_LARGE, which no retry can fix.
	c := newCluster(t, kfake.BrokerConfigs(map[string]string{"message.max.bytes": "100"}))
	s, err := NewKafka(KafkaConfig{Brokers: c.ListenAddrs(), Topic: "vigil-events", Compression: "none"}, "h1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Write(context.Background(), kafkaBatch("procmon", 0, 20)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(failAfter)
	for {
		got := s.Counts()
		checkCounts(t, got)
		if got.Pending == 0 {
			if got.Lost["rejected"] != 20 || !strings.Contains(got.LastError, "MESSAGE_TOO_LARGE") {
				t.Fatalf("counts %+v, want 20 rejected", got)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("records never failed: %+v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitCounts waits until the sink's counts satisfy cond, checking that they
// stay exact meanwhile.
func waitCounts(t *testing.T, s *Kafka, cond func(Counts) bool) Counts {
	t.Helper()
	deadline := time.Now().Add(failAfter)
	for {
		c := s.Counts()
		checkCounts(t, c)
		if cond(c) {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("counts never got there: %+v", c)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
