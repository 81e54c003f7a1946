package httpapi

import (
	"errors"
	"io"
	"sync/atomic"
)

// errBusy is what a budget reader fails with past its budget.
var errBusy = errors.New("httpapi: busy")

// budget bounds the decoded bytes held by all the bodies a route is
// taking in at once, whatever the number of connections (a body of a
// few KiB of gzip can decode to its route's whole per-body limit).
type budget struct {
	max  int64
	held atomic.Int64
}

// reader counts what is read from r against the budget; release gives it
// back once the request is done with it.
func (b *budget) reader(r io.Reader) *budgetReader { return &budgetReader{r: r, b: b} }

// budgetReader reads a decoded body, counting what it holds against its
// budget; it fails with errBusy past it.
type budgetReader struct {
	r    io.Reader
	b    *budget
	held int64
}

func (br *budgetReader) Read(p []byte) (int, error) {
	n, err := br.r.Read(p)
	if n > 0 {
		if br.b.held.Add(int64(n)) > br.b.max {
			br.b.held.Add(-int64(n))
			return 0, errBusy
		}
		br.held += int64(n)
	}
	return n, err
}

// release gives back what the body held.
func (br *budgetReader) release() {
	br.b.held.Add(-br.held)
	br.held = 0
}
