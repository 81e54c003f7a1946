package sdk_test

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/sdk"
	"github.com/vigil-hids/vigil/sdk/sdktest"
)

func TestBackoffSequence(t *testing.T) {
	tests := []struct {
		name string
		b    sdk.Backoff
		want []time.Duration
	}{
		{
			name: "doubles up to the cap",
			b:    sdk.Backoff{Initial: time.Second, Max: 10 * time.Second, Multiplier: 2},
			want: []time.Duration{1, 2, 4, 8, 10, 10, 10},
		},
		{
			name: "multiplier below one stays flat",
			b:    sdk.Backoff{Initial: 3 * time.Second, Max: time.Minute, Multiplier: 0.5},
			want: []time.Duration{3, 3, 3},
		},
		{
			name: "initial above max is capped",
			b:    sdk.Backoff{Initial: time.Hour, Max: 5 * time.Second, Multiplier: 2},
			want: []time.Duration{5, 5},
		},
		{
			name: "triples",
			b:    sdk.Backoff{Initial: time.Second, Max: 100 * time.Second, Multiplier: 3},
			want: []time.Duration{1, 3, 9, 27, 81, 100},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.b
			for i, w := range tt.want {
				if got := b.Next(); got != w*time.Second {
					t.Fatalf("delay %d = %v, want %v", i, got, w*time.Second)
				}
			}
			b.Reset()
			if got := b.Next(); got != tt.want[0]*time.Second {
				t.Errorf("after Reset, delay = %v, want %v", got, tt.want[0]*time.Second)
			}
		})
	}
}

func TestBackoffJitterStaysWithinBounds(t *testing.T) {
	b := sdk.NewBackoff("host-1", 100*time.Millisecond, 30*time.Second)
	ref := sdk.Backoff{Initial: 100 * time.Millisecond, Max: 30 * time.Second, Multiplier: 2}
	jittered := 0
	for i := 0; i < 2000; i++ {
		if i%40 == 0 {
			b.Reset()
			ref.Reset()
		}
		got, base := b.Next(), ref.Next()
		low := time.Duration(float64(base) * (1 - sdk.DefaultBackoffJitter))
		if got > base || got < low {
			t.Fatalf("draw %d: %v outside [%v, %v]", i, got, low, base)
		}
		if got > 30*time.Second {
			t.Fatalf("draw %d: %v above the cap", i, got)
		}
		if got != base {
			jittered++
		}
	}
	if jittered < 1900 {
		t.Errorf("only %d of 2000 delays were jittered", jittered)
	}
}

func TestBackoffSeededByName(t *testing.T) {
	seq := func(seed string) []time.Duration {
		b := sdk.NewBackoff(seed, time.Second, time.Minute)
		var s []time.Duration
		for i := 0; i < 8; i++ {
			s = append(s, b.Next())
		}
		return s
	}
	a1, a2, other := seq("web-0001"), seq("web-0001"), seq("web-0002")
	same := func(x, y []time.Duration) bool {
		for i := range x {
			if x[i] != y[i] {
				return false
			}
		}
		return true
	}
	if !same(a1, a2) {
		t.Errorf("one seed gave two sequences: %v and %v", a1, a2)
	}
	if same(a1, other) {
		t.Errorf("two host names gave one sequence %v", a1)
	}
}

func TestBackoffHugeMultiplierDoesNotOverflow(t *testing.T) {
	b := sdk.Backoff{Initial: time.Hour, Multiplier: 1e9} // no cap
	prev := time.Duration(0)
	for i := 0; i < 10; i++ {
		d := b.Next()
		if d < prev || d <= 0 {
			t.Fatalf("delay %d = %v after %v", i, d, prev)
		}
		prev = d
	}
	if prev != math.MaxInt64 {
		t.Errorf("uncapped delay settled at %v, want the largest duration", prev)
	}
}

var errFlaky = errors.New("flaky")

func TestRetry(t *testing.T) {
	tests := []struct {
		name      string
		failures  int   // fn fails this many times, then succeeds
		failWith  error // what fn fails with
		cancelAt  int   // cancel the context after this many sleeps (0: never)
		wantCalls int
		wantSleep []time.Duration
		wantIs    []error
		wantErr   bool
	}{
		{
			name: "first try", failures: 0, wantCalls: 1,
		},
		{
			name: "succeeds after three failures", failures: 3, failWith: errFlaky, wantCalls: 4,
			wantSleep: []time.Duration{time.Second, 2 * time.Second, 4 * time.Second},
		},
		{
			name: "permanent error returns at once", failures: 100, failWith: sdk.Permanent(errFlaky), wantCalls: 1,
			wantErr: true, wantIs: []error{errFlaky},
		},
		{
			name: "context cancelled while waiting", failures: 100, failWith: errFlaky, cancelAt: 2, wantCalls: 2,
			wantSleep: []time.Duration{time.Second, 2 * time.Second},
			wantErr:   true, wantIs: []error{sdk.ErrRetryStopped, context.Canceled, errFlaky},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			clock := sdktest.NewFakeClock(time.Unix(0, 0))
			clock.OnSleep(func(n int) {
				if n == tt.cancelAt {
					cancel()
				}
			})
			b := &sdk.Backoff{Initial: time.Second, Max: time.Minute, Multiplier: 2, Clock: clock}
			b.Next() // Retry starts from a reset backoff
			calls := 0
			err := sdk.Retry(ctx, b, func(ctx context.Context) error {
				calls++
				if calls <= tt.failures {
					return tt.failWith
				}
				return nil
			})
			if (err != nil) != tt.wantErr {
				t.Fatalf("Retry = %v, want error %t", err, tt.wantErr)
			}
			for _, target := range tt.wantIs {
				if !errors.Is(err, target) {
					t.Errorf("Retry error %q does not match %v", err, target)
				}
			}
			if calls != tt.wantCalls {
				t.Errorf("fn called %d times, want %d", calls, tt.wantCalls)
			}
			if got := clock.Sleeps(); !equalDurations(got, tt.wantSleep) {
				t.Errorf("slept %v, want %v", got, tt.wantSleep)
			}
		})
	}
}

func TestRetryCancelledBeforeFirstAttempt(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	err := sdk.Retry(ctx, sdk.NewBackoff("h", time.Second, time.Minute), func(context.Context) error {
		called = true
		return nil
	})
	if called || !errors.Is(err, context.Canceled) || !errors.Is(err, sdk.ErrRetryStopped) {
		t.Errorf("Retry on a cancelled context: called=%t err=%v", called, err)
	}
}

func TestSystemClockSleepStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := sdk.SystemClock().Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("Sleep(cancelled, 1h) = %v, want context.Canceled", err)
	}
	if err := sdk.SystemClock().Sleep(context.Background(), time.Microsecond); err != nil {
		t.Errorf("Sleep(1µs) = %v", err)
	}
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
