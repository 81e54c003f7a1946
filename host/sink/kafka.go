package sink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/vigil-hids/vigil/sdk"
)

// KafkaConfig configures the Kafka sink (sinks.kafka). Each event is one
// Kafka record: the event's NDJSON line (the same JSON object the file sink
// writes, newline included) keyed by the host name, so one host's events
// stay in order in one partition. Producing waits for all in-sync replicas
// (acks=all).
type KafkaConfig struct {
	// Brokers are the seed brokers, host:port.
	Brokers []string `yaml:"brokers" json:"brokers"`
	// Topic receives the events; it must exist unless the cluster creates
	// topics on first use.
	Topic string `yaml:"topic" json:"topic"`
	// TLS turns on TLS to the brokers when set (an empty section uses the
	// system's CAs).
	TLS *KafkaTLS `yaml:"tls" json:"tls,omitempty"`
	// SASL authenticates to the brokers when set.
	SASL *KafkaSASL `yaml:"sasl" json:"sasl,omitempty"`
	// BufferMB bounds the events buffered in memory while the brokers are
	// slow or away, in MiB; when it is full Write fails at once and the
	// pipeline counts the batch as sink_error.
	BufferMB int `yaml:"buffer_mb" json:"buffer_mb"`
	// Compression of record batches: none, gzip, snappy, lz4 or zstd.
	Compression string `yaml:"compression" json:"compression"`
	// RecordTimeout is how long an event may wait for the brokers before
	// it is counted as lost ("timeout").
	RecordTimeout time.Duration `yaml:"record_timeout" json:"record_timeout"`
}

// KafkaTLS holds the PEM files for TLS to the brokers. CAFile replaces the
// system's CAs; CertFile and KeyFile (both or neither) are the client's
// certificate.
type KafkaTLS struct {
	CAFile   string `yaml:"ca_file" json:"ca_file,omitempty"`
	CertFile string `yaml:"cert_file" json:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file" json:"key_file,omitempty"`
}

// KafkaSASL is the SASL login: Mechanism is PLAIN, SCRAM-SHA-256 or
// SCRAM-SHA-512. Use PLAIN only over TLS.
type KafkaSASL struct {
	Mechanism string `yaml:"mechanism" json:"mechanism"`
	Username  string `yaml:"username" json:"username"`
	// Password, or PasswordFile: a file holding it (one line; it must
	// not be readable by group or others), so the config file need not
	// hold the secret.
	Password     string `yaml:"password" json:"-"`
	PasswordFile string `yaml:"password_file" json:"password_file,omitempty"`
}

// password is the SASL password: Password, or PasswordFile's first line.
func (a KafkaSASL) password() (string, error) {
	if a.PasswordFile == "" {
		return a.Password, nil
	}
	// O_NONBLOCK: a FIFO named here must not hang the host's start; it
	// is refused below, as is anything but a regular file.
	f, err := os.OpenFile(a.PasswordFile, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", fmt.Errorf("sinks.kafka.sasl.password_file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("sinks.kafka.sasl.password_file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("sinks.kafka.sasl.password_file %s is not a regular file (%v)", a.PasswordFile, fi.Mode().Type())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("sinks.kafka.sasl.password_file %s is readable by group or others (mode %v); chmod 600 it", a.PasswordFile, fi.Mode().Perm())
	}
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", fmt.Errorf("sinks.kafka.sasl.password_file: %w", err)
	}
	pw, _, found := strings.Cut(string(b), "\n")
	if !found && len(b) == 4096 {
		return "", fmt.Errorf("sinks.kafka.sasl.password_file %s: the password line is longer than 4096 bytes", a.PasswordFile)
	}
	pw = strings.TrimSuffix(pw, "\r")
	if pw == "" {
		return "", fmt.Errorf("sinks.kafka.sasl.password_file %s is empty", a.PasswordFile)
	}
	return pw, nil
}

// Kafka sink defaults and limits.
const (
	DefaultKafkaBufferMB      = 16
	MinKafkaBufferMB          = 1
	MaxKafkaBufferMB          = 1024
	DefaultKafkaCompression   = "zstd"
	DefaultKafkaRecordTimeout = 30 * time.Second
	MinKafkaRecordTimeout     = time.Second
	MaxKafkaRecordTimeout     = time.Hour
	// kafkaFinalFlush bounds how long Close waits for buffered events.
	kafkaFinalFlush = 2 * time.Second
	// kafkaCloseWait bounds how long Close then waits for the client to
	// report the fate of what was still buffered.
	kafkaCloseWait = 10 * time.Second
)

// WithDefaults returns c with zero fields set to their defaults.
func (c KafkaConfig) WithDefaults() KafkaConfig {
	if c.BufferMB == 0 {
		c.BufferMB = DefaultKafkaBufferMB
	}
	if c.Compression == "" {
		c.Compression = DefaultKafkaCompression
	}
	if c.RecordTimeout == 0 {
		c.RecordTimeout = DefaultKafkaRecordTimeout
	}
	return c
}

// Validate checks c after defaults are applied. It does not read the TLS
// files; NewKafka does.
func (c KafkaConfig) Validate() error {
	c = c.WithDefaults()
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(c.Brokers) == 0 {
		bad("sinks.kafka.brokers must list at least one broker as host:port")
	}
	for i, b := range c.Brokers {
		if err := validBroker(b); err != nil {
			bad("sinks.kafka.brokers[%d] %q: %v", i, b, err)
		}
	}
	if err := ValidKafkaTopic(c.Topic); err != nil {
		bad("sinks.kafka.topic: %v", err)
	}
	if c.BufferMB < MinKafkaBufferMB || c.BufferMB > MaxKafkaBufferMB {
		bad("sinks.kafka.buffer_mb must be between %d and %d (got %d)", MinKafkaBufferMB, MaxKafkaBufferMB, c.BufferMB)
	}
	if _, ok := kafkaCodecs[c.Compression]; !ok {
		bad("sinks.kafka.compression must be one of none, gzip, snappy, lz4, zstd (got %q)", c.Compression)
	}
	if c.RecordTimeout < MinKafkaRecordTimeout || c.RecordTimeout > MaxKafkaRecordTimeout {
		bad("sinks.kafka.record_timeout must be between %s and %s (got %s)", MinKafkaRecordTimeout, MaxKafkaRecordTimeout, c.RecordTimeout)
	}
	if t := c.TLS; t != nil && (t.CertFile == "") != (t.KeyFile == "") {
		bad("sinks.kafka.tls: cert_file and key_file must be set together (got cert_file %q, key_file %q)", t.CertFile, t.KeyFile)
	}
	if s := c.SASL; s != nil {
		switch s.Mechanism {
		case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
		default:
			bad("sinks.kafka.sasl.mechanism must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (got %q)", s.Mechanism)
		}
		switch {
		case s.Username == "":
			bad("sinks.kafka.sasl.username must be set")
		case s.Password != "" && s.PasswordFile != "":
			bad("sinks.kafka.sasl: set password or password_file, not both")
		case s.Password == "" && s.PasswordFile == "":
			bad("sinks.kafka.sasl: set password or password_file")
		}
	}
	return errors.Join(errs...)
}

func validBroker(b string) error {
	host, port, err := net.SplitHostPort(b)
	if err != nil {
		return errors.New("want host:port")
	}
	if host == "" {
		return errors.New("empty host")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("port must be between 1 and 65535 (got %q)", port)
	}
	return nil
}

// ValidKafkaTopic checks a topic name by Kafka's rules: 1 to 249
// characters of [a-zA-Z0-9._-], and not "." or "..".
func ValidKafkaTopic(t string) error {
	if t == "" {
		return errors.New("must be set")
	}
	if len(t) > 249 {
		return fmt.Errorf("must be at most 249 characters (got %d)", len(t))
	}
	if t == "." || t == ".." {
		return fmt.Errorf("%q is not a valid topic name", t)
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%q: character %q at %d is not one of [a-zA-Z0-9._-]", t, c, i)
		}
	}
	return nil
}

var kafkaCodecs = map[string]kgo.CompressionCodec{
	"none":   kgo.NoCompression(),
	"gzip":   kgo.GzipCompression(),
	"snappy": kgo.SnappyCompression(),
	"lz4":    kgo.Lz4Compression(),
	"zstd":   kgo.ZstdCompression(),
}

// ErrBufferFull is returned by the Kafka sink's Write when the batch does
// not fit in the buffer (the brokers are slow or unreachable).
var ErrBufferFull = errors.New("sink kafka: buffer full (brokers slow or unreachable)")

// Kafka is the sink producing events to a Kafka topic. Write never waits
// for the network: it encodes the batch and hands its records to the
// client's buffer, or fails at once when the buffer cannot take the whole
// batch. The client delivers in the background; Counts says what became
// of every event Write took.
type Kafka struct {
	cl       *kgo.Client
	log      *slog.Logger
	topic    string
	key      []byte
	enc      *Encoder
	scratch  []byte
	ends     []int
	maxBytes int64
	maxRecs  int64
	promise  func(*kgo.Record, error)
	closed   bool

	mu        sync.Mutex
	accepted  uint64
	delivered uint64
	lost      map[string]uint64
	lostSum   uint64
	lastErr   string
	lastLog   time.Time
	drained   chan struct{} // closed when nothing is pending after Close
}

// NewKafka returns the Kafka sink for cfg, stamping events with host (also
// each record's key). It does not wait for the brokers: a cluster that is
// away shows as pending, then lost, events.
func NewKafka(cfg KafkaConfig, host string, log *slog.Logger) (*Kafka, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Kafka{
		log:      log,
		topic:    cfg.Topic,
		key:      []byte(host),
		enc:      NewEncoder(host),
		maxBytes: int64(cfg.BufferMB) << 20,
		lost:     map[string]uint64{},
	}
	// Bytes are the limit that matters; the record limit only bounds the
	// client's per-record overhead for tiny events.
	s.maxRecs = max(s.maxBytes/128, 1024)
	s.promise = s.done
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.DefaultProduceTopic(cfg.Topic),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchCompression(kafkaCodecs[cfg.Compression]),
		kgo.RecordDeliveryTimeout(cfg.RecordTimeout),
		kgo.MaxBufferedBytes(int(s.maxBytes)),
		kgo.MaxBufferedRecords(int(s.maxRecs)),
		kgo.ProducerLinger(5 * time.Millisecond),
		kgo.ClientID("vigil-host"),
	}
	if cfg.TLS != nil {
		tc, err := kafkaTLS(*cfg.TLS)
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	if a := cfg.SASL; a != nil {
		pw, err := a.password()
		if err != nil {
			return nil, err
		}
		var m sasl.Mechanism
		switch a.Mechanism {
		case "PLAIN":
			m = plain.Auth{User: a.Username, Pass: pw}.AsMechanism()
		case "SCRAM-SHA-256":
			m = scram.Auth{User: a.Username, Pass: pw}.AsSha256Mechanism()
		default:
			m = scram.Auth{User: a.Username, Pass: pw}.AsSha512Mechanism()
		}
		opts = append(opts, kgo.SASL(m))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("sink kafka: %w", err)
	}
	s.cl = cl
	return s, nil
}

func kafkaTLS(c KafkaTLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("sinks.kafka.tls.ca_file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("sinks.kafka.tls.ca_file %s: no PEM certificate in it", c.CAFile)
		}
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("sinks.kafka.tls cert_file/key_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Name returns "kafka".
func (s *Kafka) Name() string { return "kafka" }

// Write encodes the batch as one record per event and buffers the records
// for the client to send. It fails, taking none of the batch, when the
// buffer cannot hold all of it.
func (s *Kafka) Write(_ context.Context, b *Batch) error {
	if s.closed {
		return ErrClosed
	}
	s.enc.SetSource(b.Plugin, b.Version)
	buf, ends := s.scratch[:0], s.ends[:0]
	rest := b.Records
	for i := 0; i < b.Count; i++ {
		rec, r, err := sdk.NextRecord(rest)
		if err == nil {
			buf, err = s.enc.AppendLine(buf, rec)
		}
		if err != nil {
			s.scratch, s.ends = buf[:0], ends[:0]
			return fmt.Errorf("sink kafka: record %d of %d from plugin %q: %w", i, b.Count, b.Plugin, err)
		}
		ends = append(ends, len(buf))
		rest = r
	}
	s.scratch, s.ends = buf[:0], ends[:0]
	n := len(ends)
	if n == 0 {
		return nil
	}
	// The pipeline's writer is the only producer, so what is buffered only
	// shrinks while the batch goes in: if it fits now, TryProduce takes
	// every record.
	size := int64(len(buf) + n*len(s.key))
	if bb, br := s.cl.BufferedProduceBytes(), s.cl.BufferedProduceRecords(); bb+size > s.maxBytes || br+int64(n) > s.maxRecs {
		return fmt.Errorf("%w: %d bytes and %d events buffered, the batch of %d events (%d bytes) does not fit in %d bytes", ErrBufferFull, bb, br, n, size, s.maxBytes)
	}
	// One allocation for the values (the client keeps them until it
	// reports) and one for the records.
	vals := append([]byte(nil), buf...)
	recs := make([]kgo.Record, n)
	s.mu.Lock()
	s.accepted += uint64(n)
	s.mu.Unlock()
	start := 0
	for i, end := range ends {
		r := &recs[i]
		r.Key = s.key
		r.Value = vals[start:end:end]
		start = end
		s.cl.TryProduce(context.Background(), r, s.promise)
	}
	return nil
}

// done is the produce callback: it runs once per record, serially.
func (s *Kafka) done(_ *kgo.Record, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.delivered++
	} else {
		reason := kafkaLossReason(err)
		s.lost[reason]++
		s.lostSum++
		s.lastErr = err.Error()
		if now := time.Now(); now.Sub(s.lastLog) >= 10*time.Second {
			s.lastLog = now
			s.log.Error("kafka sink lost events", "reason", reason, "lost_total", s.lostSum, "error", err)
		}
	}
	if s.drained != nil && s.delivered+s.lostSum == s.accepted {
		close(s.drained)
		s.drained = nil
	}
}

// kafkaLossReason names why the client gave up on a record.
func kafkaLossReason(err error) string {
	var ke *kerr.Error
	switch {
	case errors.Is(err, kgo.ErrRecordTimeout):
		return "timeout"
	case errors.Is(err, kgo.ErrRecordRetries):
		return "retries_exhausted"
	case errors.Is(err, kgo.ErrClientClosed), errors.Is(err, context.Canceled):
		return "shutdown"
	case errors.Is(err, kgo.ErrMaxBuffered):
		return "buffer_full"
	case errors.As(err, &ke) && !ke.Retriable:
		return "rejected"
	}
	return "error"
}

// Counts returns what became of the events Write took. It is safe to call
// from any goroutine.
func (s *Kafka) Counts() Counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := Counts{
		Accepted:  s.accepted,
		Delivered: s.delivered,
		Pending:   s.accepted - s.delivered - s.lostSum,
		LastError: s.lastErr,
		Lost:      maps.Clone(s.lost),
	}
	return c
}

// Flush does nothing: the client sends in the background, and the
// pipeline's writer must not wait for the network.
func (s *Kafka) Flush(context.Context) error { return nil }

// Close gives buffered events up to two seconds to be delivered, then
// closes the client, which fails what is left ("shutdown"), and waits for
// every event's outcome so Counts has no pending events. It is idempotent.
func (s *Kafka) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), kafkaFinalFlush)
	_ = s.cl.Flush(ctx) // a timeout leaves the rest to Close to fail
	cancel()
	s.mu.Lock()
	var drained chan struct{}
	if s.delivered+s.lostSum != s.accepted {
		drained = make(chan struct{})
		s.drained = drained
	}
	s.mu.Unlock()
	s.cl.Close()
	if drained != nil {
		select {
		case <-drained:
		case <-time.After(kafkaCloseWait):
			c := s.Counts()
			s.log.Error("kafka sink closed with events unaccounted for", "pending", c.Pending)
		}
	}
	if c := s.Counts(); len(c.Lost) > 0 {
		s.log.Warn("kafka sink closed", "accepted", c.Accepted, "delivered", c.Delivered, "lost", c.Lost)
	}
	return nil
}

// String describes the sink for the agent's sink list.
func (c KafkaConfig) String() string {
	return "kafka:" + strings.Join(c.Brokers, ",") + "/" + c.Topic
}
