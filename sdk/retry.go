package sdk

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"time"
)

// Clock is the time source of Backoff, Retry and Guard. Production code
// uses SystemClock; tests pass a clock whose Sleep returns at once (see
// sdktest.FakeClock) so nothing in a test really waits.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// Sleep waits for d, or until ctx is done and then returns ctx.Err().
	Sleep(ctx context.Context, d time.Duration) error
}

// SystemClock returns the real clock.
func SystemClock() Clock { return systemClock{} }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Backoff computes capped exponential delays with jitter. The jitter comes
// from a random source seeded by a string (the host name, plus whatever
// names the retrying thing), so a fleet of hosts that lost the server at the
// same instant comes back spread out instead of in lock step, while one host
// always draws the same sequence, which keeps tests and incidents
// reproducible.
//
// The n-th delay (from 0) is min(Initial*Multiplier^n, Max), less a random
// share of up to Jitter of it; a delay never exceeds Max. A Backoff is not
// safe for concurrent use.
type Backoff struct {
	// Initial is the first delay.
	Initial time.Duration
	// Max caps every delay; zero or less means no cap.
	Max time.Duration
	// Multiplier grows the delay after each attempt; below 1 counts as 1.
	Multiplier float64
	// Jitter, in [0, 1], is the largest share of a delay taken off at
	// random; 0.2 turns 10s into a delay between 8s and 10s.
	Jitter float64
	// Clock sleeps between attempts of Retry; nil means SystemClock.
	Clock Clock

	rng *rand.Rand
	cur time.Duration
}

// fnvOffset is fnv64a of "", golden spreads the second PCG word.
const (
	fnvOffset = 14695981039346656037
	golden    = 0x9e3779b97f4a7c15
)

// Default backoff shape used by NewBackoff.
const (
	DefaultBackoffMultiplier = 2.0
	DefaultBackoffJitter     = 0.2
)

// NewBackoff returns a backoff from initial to maxDelay, doubling, with 20%
// jitter drawn from a source seeded by seed (e.g. the host name, or
// "host/plugin"). Change the exported fields before the first Next to
// reshape it.
func NewBackoff(seed string, initial, maxDelay time.Duration) *Backoff {
	h := fnv.New64a()
	h.Write([]byte(seed))
	s := h.Sum64()
	return &Backoff{
		Initial:    initial,
		Max:        maxDelay,
		Multiplier: DefaultBackoffMultiplier,
		Jitter:     DefaultBackoffJitter,
		rng:        rand.New(rand.NewPCG(s, s^golden)),
	}
}

// Next returns the delay to wait before the next attempt and advances.
func (b *Backoff) Next() time.Duration {
	if b.rng == nil { // a Backoff written as a literal: seed as for ""
		b.rng = rand.New(rand.NewPCG(fnvOffset, fnvOffset^golden))
	}
	capD := b.Max
	if capD <= 0 {
		capD = math.MaxInt64
	}
	if b.cur == 0 {
		b.cur = min(max(b.Initial, 0), capD)
	}
	d := b.cur
	if grown := float64(b.cur) * max(b.Multiplier, 1); grown >= float64(capD) {
		b.cur = capD // also keeps the float from overflowing the Duration
	} else {
		b.cur = time.Duration(grown)
	}
	if j := min(max(b.Jitter, 0), 1); j > 0 && d > 0 {
		d -= time.Duration(float64(d) * j * b.rng.Float64())
	}
	return d
}

// Reset starts the sequence again from Initial, e.g. after a success or
// after a restarted worker has stayed up long enough. The jitter source is
// not rewound.
func (b *Backoff) Reset() { b.cur = 0 }

func (b *Backoff) clock() Clock {
	if b.Clock == nil {
		return systemClock{}
	}
	return b.Clock
}

// permanent marks an error that Retry must not retry.
type permanent struct{ err error }

func (p *permanent) Error() string { return p.err.Error() }
func (p *permanent) Unwrap() error { return p.err }

// Permanent wraps err so that Retry returns it at once instead of trying
// again (a refused signature, an invalid config: waiting will not help).
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanent{err: err}
}

// ErrRetryStopped is matched by the error Retry returns when its context
// ended before fn succeeded; that error also matches the context's error
// and fn's last error.
var ErrRetryStopped = errors.New("sdk: retry stopped")

// Retry calls fn until it returns nil, waiting b.Next() between attempts on
// b.Clock. It resets b first. It returns nil on success; fn's error,
// unwrapped, if fn returned Permanent(err); or, once ctx is done, an error
// matching ErrRetryStopped, ctx.Err() and fn's last error.
func Retry(ctx context.Context, b *Backoff, fn func(ctx context.Context) error) error {
	b.Reset()
	clock := b.clock()
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w before attempt %d: %w", ErrRetryStopped, attempt, err)
		}
		err := fn(ctx)
		if err == nil {
			return nil
		}
		var p *permanent
		if errors.As(err, &p) {
			return p.err
		}
		if serr := clock.Sleep(ctx, b.Next()); serr != nil {
			return fmt.Errorf("%w after %d attempts: %w; last error: %w", ErrRetryStopped, attempt, serr, err)
		}
	}
}
