package netmon

import "encoding/binary"

// inodeSet remembers socket inodes across snapshots with the generation in
// which each was last seen, in one open-addressing table: a snapshot of
// 200,000 sockets costs one probe per socket to both record a socket and
// tell whether it is new, where two Go maps (this snapshot, the previous
// one) cost two lookups and churn twice the memory. Entries are never
// deleted; the table is rebuilt with only the live entries when stale ones
// fill it.
type inodeSet struct {
	slots []uint64 // inode<<32 | generation; 0 is empty (inode 0 is never stored)
	mask  uint32
	used  int    // occupied slots, live or stale
	live  int    // entries seen at or after since
	gen   uint32 // current generation
	since uint32 // entries with generation >= since are known
	sink  uint64 // keeps warm's loads from being optimised away
}

func newInodeSet() *inodeSet {
	s := &inodeSet{}
	s.alloc(1 << 12)
	s.gen, s.since = 1, 1
	return s
}

func (s *inodeSet) alloc(n int) {
	s.slots = make([]uint64, n)
	s.mask = uint32(n - 1)
	s.used = 0
}

func hashInode(ino uint32) uint32 { return (ino * 0x9e3779b1) ^ (ino >> 15) }

// begin starts a new generation. If the last one was complete, only inodes
// seen in it stay known; after a truncated one, inodes it did not reach stay
// known too.
func (s *inodeSet) begin(lastComplete bool) {
	if lastComplete {
		s.since = s.gen
	}
	s.gen++
	s.live = 0
	if s.used*4 > len(s.slots)*3 {
		s.rebuild()
	}
}

// see records ino in the current generation and reports whether it was
// unknown before (new since the last complete snapshot).
func (s *inodeSet) see(ino uint32) (isNew bool) {
	if ino == 0 {
		return false
	}
	for i := hashInode(ino) & s.mask; ; i = (i + 1) & s.mask {
		e := s.slots[i]
		if e == 0 {
			s.slots[i] = uint64(ino)<<32 | uint64(s.gen)
			s.used++
			s.live++
			if s.used*4 > len(s.slots)*3 {
				s.rebuild()
			}
			return true
		}
		if uint32(e>>32) == ino {
			g := uint32(e)
			if g == s.gen {
				return false // seen twice in one dump (SO_REUSEPORT, v4-mapped)
			}
			s.slots[i] = uint64(ino)<<32 | uint64(s.gen)
			s.live++
			return g < s.since
		}
	}
}

// current reports whether ino was seen in the current generation.
func (s *inodeSet) current(ino uint32) bool {
	if ino == 0 {
		return false
	}
	for i := hashInode(ino) & s.mask; ; i = (i + 1) & s.mask {
		e := s.slots[i]
		if e == 0 {
			return false
		}
		if uint32(e>>32) == ino {
			return uint32(e) == s.gen
		}
	}
}

// rebuild keeps the known entries in a table sized for them.
func (s *inodeSet) rebuild() {
	old := s.slots
	keep := 0
	for _, e := range old {
		if e != 0 && uint32(e) >= s.since {
			keep++
		}
	}
	n := 1 << 12
	for n < keep*2 { // 8 bytes a slot: 4 MiB for 200,000 sockets
		n <<= 1
	}
	s.alloc(n)
	for _, e := range old {
		if e == 0 || uint32(e) < s.since {
			continue
		}
		for i := hashInode(uint32(e>>32)) & s.mask; ; i = (i + 1) & s.mask {
			if s.slots[i] == 0 {
				s.slots[i] = e
				s.used++
				break
			}
		}
	}
}

// warm touches the table slot of every socket inode in one datagram of a
// dump before the datagram is parsed. The loads do not depend on one
// another, so the CPU overlaps their cache misses, where see, one socket at
// a time, would wait for each in turn; see then finds its slot in cache.
// It reads only what parseDiag will check again and ignores anything
// malformed.
func (s *inodeSet) warm(b []byte) {
	var acc uint64
	for len(b) >= nlmsgHdrLen+inetDiagMsgLen {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < nlmsgHdrLen || l > len(b) {
			break
		}
		if l >= nlmsgHdrLen+inetDiagMsgLen {
			ino := binary.NativeEndian.Uint32(b[nlmsgHdrLen+68 : nlmsgHdrLen+72])
			acc += s.slots[hashInode(ino)&s.mask]
		}
		next := (l + 3) &^ 3
		if next > len(b) {
			break
		}
		b = b[next:]
	}
	s.sink += acc
}
