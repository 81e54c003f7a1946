package netmon

import (
	"bytes"
	"slices"
	"testing"
)

func TestInodeSet(t *testing.T) {
	s := newInodeSet()
	// Snapshot 1: everything is new.
	s.begin(true)
	for ino := uint32(1); ino <= 10000; ino++ {
		if !s.see(ino) {
			t.Fatalf("snapshot 1: inode %d not new", ino)
		}
	}
	if s.see(5) {
		t.Fatal("inode seen twice in one snapshot reported new twice")
	}
	// Snapshot 2 (after a complete one): half survive, half are new.
	s.begin(true)
	for ino := uint32(5001); ino <= 15000; ino++ {
		if got, want := s.see(ino), ino > 10000; got != want {
			t.Fatalf("snapshot 2: inode %d new=%t, want %t", ino, got, want)
		}
	}
	if s.current(1) || !s.current(5001) || s.current(20000) {
		t.Fatal("current is wrong")
	}
	// Snapshot 3 is truncated: it sees only a few.
	s.begin(true)
	for ino := uint32(5001); ino <= 5010; ino++ {
		if s.see(ino) {
			t.Fatalf("snapshot 3: inode %d reported new", ino)
		}
	}
	// Snapshot 4, after the truncated one: inodes snapshot 3 did not reach
	// are still known; inodes gone since snapshot 2 are new again.
	s.begin(false)
	for ino := uint32(14990); ino <= 15000; ino++ {
		if s.see(ino) {
			t.Fatalf("snapshot 4: inode %d, not reached by the truncated snapshot, reported new", ino)
		}
	}
	if !s.see(1) {
		t.Fatal("snapshot 4: inode 1, gone since snapshot 1, not new")
	}
	// Many generations of churn keep the table bounded.
	for g := 0; g < 50; g++ {
		s.begin(true)
		base := uint32(100000 + g*1000)
		for ino := base; ino < base+1000; ino++ {
			s.see(ino)
		}
	}
	if len(s.slots) > 1<<14 {
		t.Fatalf("table grew to %d slots for 1000 live inodes", len(s.slots))
	}
}

func BenchmarkInodeSet(b *testing.B) {
	s := newInodeSet()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		s.begin(true)
		for ino := uint32(1); ino <= 200000; ino++ {
			s.see(ino * 7)
		}
	}
}

// TestInodeSetWarm: warming the slots of a real dump's inodes changes
// nothing that see reports, and warm reads malformed input without fault.
func TestInodeSetWarm(t *testing.T) {
	raw := readFixture(t, "diag_tcp.bin")
	a, b := newInodeSet(), newInodeSet()
	var s Socket
	var gotA, gotB []bool
	if _, err := parseDiag(raw, protoTCP, &s, func(s *Socket) { gotA = append(gotA, a.see(s.Inode)) }); err != nil {
		t.Fatal(err)
	}
	b.warm(raw)
	if _, err := parseDiag(raw, protoTCP, &s, func(s *Socket) { gotB = append(gotB, b.see(s.Inode)) }); err != nil {
		t.Fatal(err)
	}
	if len(gotA) == 0 || !slices.Equal(gotA, gotB) {
		t.Fatalf("see with warm %v, without %v", gotB, gotA)
	}
	for _, bad := range [][]byte{nil, raw[:10], raw[:len(raw)-30], {200, 0, 0, 0, 20, 0, 2, 0}, bytes.Repeat([]byte{0xff}, 200)} {
		b.warm(bad)
	}
}
