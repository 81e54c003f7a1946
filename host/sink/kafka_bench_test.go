package sink

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/vigil-hids/vigil/sdk"
)

// kafkaBenchBatch is a batch of 64 of BenchmarkEncode's six-field events
// (about 280 bytes of NDJSON each).
func kafkaBenchBatch() *Batch {
	ts := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC).UnixNano()
	return batchOf("procmon", 64, func(i int) *sdk.Event {
		return &sdk.Event{Type: "exec", Time: time.Unix(0, ts+int64(i)), Severity: sdk.SevInfo, Fields: []sdk.Field{
			sdk.Int("pid", int64(100000+i)), sdk.Int("ppid", 4242), sdk.Int("uid", 1000),
			sdk.String("exe", "/usr/bin/ls"), sdk.String("cmdline", "ls -la --color=auto /var/log/nginx"),
			sdk.String("cwd", "/home/deploy/releases/20261125"),
		}}
	})
}

func benchKafka(b *testing.B) *Kafka {
	// BlackholeProduce: the fake broker acknowledges without storing, so
	// the figures are the sink's and the client's, not kfake's storage.
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "vigil-events"), kfake.BlackholeProduce())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	s, err := NewKafka(KafkaConfig{Brokers: c.ListenAddrs(), Topic: "vigil-events"}, "bench-host-1", nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// waitDelivered waits until nothing is pending; it fails on a loss.
func waitDelivered(b *testing.B, s *Kafka) {
	deadline := time.Now().Add(time.Minute)
	for {
		c := s.Counts()
		if len(c.Lost) > 0 {
			b.Fatalf("lost events: %+v", c)
		}
		if c.Pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("not delivered: %+v", c)
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkKafkaWrite is what the pipeline's writer pays: one op is Write
// of a batch of 64 events (encode, copy, hand to the client). When the
// buffer is full the clock stops while it drains, so only Writes that
// took their batch are timed.
func BenchmarkKafkaWrite(b *testing.B) {
	s := benchKafka(b)
	bt := kafkaBenchBatch()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		err := s.Write(context.Background(), bt)
		if errors.Is(err, ErrBufferFull) {
			b.StopTimer()
			waitDelivered(b, s)
			b.StartTimer()
			err = s.Write(context.Background(), bt)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*bt.Count), "ns/event")
	waitDelivered(b, s)
}

// BenchmarkKafkaThroughput is end to end: batches of 64 events written as
// fast as the buffer takes them until every event is acknowledged by the
// fake broker (acks=all, zstd).
func BenchmarkKafkaThroughput(b *testing.B) {
	s := benchKafka(b)
	bt := kafkaBenchBatch()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for {
			err := s.Write(context.Background(), bt)
			if err == nil {
				break
			}
			if !errors.Is(err, ErrBufferFull) {
				b.Fatal(err)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	waitDelivered(b, s)
	b.StopTimer()
	b.ReportMetric(float64(b.N*bt.Count)/b.Elapsed().Seconds(), "events/s")
}
