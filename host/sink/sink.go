// Package sink defines where the host's events go once the pipeline has
// queued, rate limited and accounted for them, and provides the NDJSON file
// sink (two files of a fixed size, the default), the stdout sink and the
// Kafka sink (one record per event, keyed by host). The server's ingest API
// sink implements the same interface.
package sink

import (
	"context"
	"errors"
)

// Batch is a run of event records from one plugin. Records holds Count
// length-prefixed pluginpb.Event records (split them with sdk.NextRecord);
// the pipeline has checked that every one decodes. A sink must not keep
// Records after Write returns.
type Batch struct {
	Plugin  string
	Version string
	Count   int
	Records []byte
}

// Sink receives batches from the pipeline's single writer goroutine, so an
// implementation needs no locking of its own for Write and Flush.
type Sink interface {
	// Name identifies the sink in logs, e.g. "file" or "stdout".
	Name() string
	// Write delivers the batch. An error means none of the batch's events
	// can be counted as delivered; the pipeline counts them as sink_error.
	Write(ctx context.Context, b *Batch) error
	// Flush pushes out anything the sink buffers.
	Flush(ctx context.Context) error
	// Close flushes and releases the sink. It is idempotent.
	Close() error
}

// Counted is implemented by a sink that delivers after Write returns (the
// network sinks: Write only queues): the pipeline counts a batch it took
// as delivered, so the sink counts what happened to it afterwards. Nothing
// is lost silently: `vigil-host status` and the heartbeat show these.
type Counted interface {
	Sink
	Counts() Counts
}

// Counts is what a Counted sink did with the events its Write took.
type Counts struct {
	// Accepted events were taken by Write; Delivered ones acknowledged by
	// the destination; Pending are neither delivered nor lost yet.
	Accepted  uint64 `json:"accepted"`
	Delivered uint64 `json:"delivered"`
	Pending   uint64 `json:"pending"`
	// Lost are events dropped after Write took them, by reason (e.g.
	// "rejected", "retries_exhausted", "shutdown"). Accepted = Delivered +
	// Pending + the sum of Lost.
	Lost map[string]uint64 `json:"lost,omitempty"`
	// LastError is the latest delivery error, empty if none yet.
	LastError string `json:"last_error,omitempty"`
}

// ErrClosed is returned by Write on a closed sink.
var ErrClosed = errors.New("sink: closed")
