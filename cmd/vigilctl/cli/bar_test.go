package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/server/store"
)

func TestProgressBar(t *testing.T) {
	tests := []struct {
		name string
		tty  bool
		p    store.Progress
		want string
	}{
		{name: "half", tty: true, p: store.Progress{Targeted: 10, Acknowledged: 5},
			want: "\r[###############---------------] 5/10 acknowledged  1.5s"},
		{name: "none targeted", tty: true, p: store.Progress{},
			want: "\r[------------------------------] 0/0 acknowledged  1.5s"},
		{name: "not a terminal", tty: false, p: store.Progress{Targeted: 10, Acknowledged: 5}, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			b := &bar{w: &buf, tty: tt.tty}
			b.draw(tt.p, 1500*time.Millisecond)
			if buf.String() != tt.want {
				t.Fatalf("got %q, want %q", buf.String(), tt.want)
			}
			buf.Reset()
			b.done()
			if tt.tty && !strings.HasPrefix(buf.String(), "\r ") {
				t.Fatalf("done did not clear the line: %q", buf.String())
			}
		})
	}
}
