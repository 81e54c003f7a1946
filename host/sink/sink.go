// Package sink defines where the host's events go once the pipeline has
// queued, rate limited and accounted for them, and provides the NDJSON file
// sink (two files of a fixed size, the default) and the stdout sink. The
// server's ingest API and Kafka sinks implement the same interface.
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

// ErrClosed is returned by Write on a closed sink.
var ErrClosed = errors.New("sink: closed")
