package collect

import (
	"bytes"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
)

// ErrCorruptRPM is matched (errors.Is) by the error CheckRPM returns for a
// database whose structure go-rpmdb would not read safely.
var ErrCorruptRPM = errors.New("collect: corrupt rpm database")

// CorruptError says which rpm database was refused and why.
type CorruptError struct {
	Path    string
	Problem string
}

func (e *CorruptError) Error() string { return "rpm database " + e.Path + ": " + e.Problem }

// Is makes errors.Is(err, ErrCorruptRPM) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorruptRPM }

// CheckRPM validates, with bounded work and memory, the structure that
// go-rpmdb v0.1.1 walks in a Berkeley DB ("Packages") or NDB
// ("Packages.db") rpm database, before go-rpmdb reads it. go-rpmdb trusts
// every page number, offset and length it finds: on a corrupt Berkeley DB
// file it can loop forever (an overflow chain pointing at a page of
// another type), grow memory without bound (a chain that loops) or panic
// in a goroutine of its own, which ends the process; on a corrupt NDB file
// it can allocate a blob of up to 4 GiB or leave its reader goroutine
// blocked. CheckRPM follows exactly the pages and records go-rpmdb will
// follow and refuses the file (a *CorruptError naming the file and the
// problem) when any of them is out of bounds, of the wrong type or visited
// twice, so every file it accepts is read by go-rpmdb in time and memory
// bounded by the file's size. Each page is read at most twice and each
// slot once; memory is one page plus a bit per page. In a SQLite database
// (whose own format the SQLite library checks) it reads each package row's
// length and first 8 bytes, opened read-only: every row must be a header
// blob that fits its claimed lengths, as go-rpmdb decodes it.
func CheckRPM(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening rpm database %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("opening rpm database %s: %w", path, err)
	}
	var head [512]byte
	n, err := f.ReadAt(head[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("reading rpm database %s: %w", path, err)
	}
	// The order of go-rpmdb's Open: SQLite, then NDB, then Berkeley DB.
	var problem string
	switch {
	case n >= 16 && bytes.Equal(head[:16], []byte("SQLite format 3\x00")):
		problem, err = checkSQLite(path)
	case n >= 32 && isNDB(head[:32]):
		problem, err = checkNDB(f, st.Size(), head[:32])
	default:
		problem, err = checkBDB(f, st.Size(), head[:])
	}
	if err != nil {
		return fmt.Errorf("reading rpm database %s: %w", path, err)
	}
	if problem != "" {
		return &CorruptError{Path: path, Problem: problem}
	}
	return nil
}

// Berkeley DB page types (libdb dbinc/db_page.h) and the hash item type
// of an off-page value.
const (
	bdbHashUnsorted = 2
	bdbOverflow     = 7
	bdbHashMeta     = 8
	bdbHash         = 13
	bdbHOffPage     = 3 // H_OFFPAGE item on a hash page

	bdbHeaderSize  = 26 // every page's header
	bdbHOffSize    = 12 // an H_OFFPAGE item: type, 3 unused, pgno, tlen
	bdbHashMagic   = 0x00061561
	bdbHashMagicBE = 0x61150600 // the magic of a big-endian file read as little-endian
)

func bdbPageType(t byte) string {
	switch t {
	case 0:
		return "invalid (free)"
	case bdbHashUnsorted:
		return "hash (unsorted)"
	case bdbOverflow:
		return "overflow"
	case bdbHashMeta:
		return "hash metadata"
	case bdbHash:
		return "hash"
	}
	return fmt.Sprintf("%d", t)
}

// checkBDB follows go-rpmdb's bdb.BerkeleyDB.Read: every page up to the
// metadata's last page, and on each hash page every value that is an
// H_OFFPAGE item, through its chain of overflow pages. It returns the
// first problem found, "" for none; err only for an I/O error.
func checkBDB(f io.ReaderAt, size int64, head []byte) (problem string, err error) {
	var order binary.ByteOrder = binary.LittleEndian
	switch binary.LittleEndian.Uint32(head[12:16]) {
	case bdbHashMagic:
	case bdbHashMagicBE:
		order = binary.BigEndian
	default:
		return "not an rpm database: no SQLite, NDB or Berkeley DB hash magic", nil
	}
	if head[24] != 0 {
		return fmt.Sprintf("encrypted Berkeley DB (algorithm %d)", head[24]), nil
	}
	if head[25] != bdbHashMeta {
		return fmt.Sprintf("page 0 is of type %s (want hash metadata)", bdbPageType(head[25])), nil
	}
	pageSize := int64(order.Uint32(head[20:24]))
	switch pageSize {
	case 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536:
	default:
		return fmt.Sprintf("page size %d is not a Berkeley DB page size", pageSize), nil
	}
	last := int64(order.Uint32(head[32:36]))
	if (last+1)*pageSize > size {
		return fmt.Sprintf("the metadata's last page is %d of %d bytes, but the file holds %d bytes", last, pageSize, size), nil
	}
	pages := last + 1
	// go-rpmdb computes a page's offset as a uint32.
	if pages*pageSize > 1<<32 {
		return fmt.Sprintf("%d pages of %d bytes is beyond the 4 GiB a Berkeley DB rpm database can address", pages, pageSize), nil
	}
	// used[p] is set once overflow page p is part of a chain: no page is
	// read twice, so the values go-rpmdb assembles add up to no more than
	// the file.
	used := make([]uint64, (pages+63)/64)
	page := make([]byte, pageSize)
	ovf := make([]byte, pageSize) // an overflow page, read whole
	var value []byte              // no longer than the file: no page is part of two chains
	for pgno := int64(0); pgno < pages; pgno++ {
		if _, err := f.ReadAt(page, pgno*pageSize); err != nil {
			return "", err
		}
		typ := page[25]
		if typ != bdbHash && typ != bdbHashUnsorted {
			continue
		}
		entries := int(order.Uint16(page[20:22]))
		if entries%2 != 0 {
			return fmt.Sprintf("hash page %d has an odd number of entries (%d)", pgno, entries), nil
		}
		// go-rpmdb slices the index with uint16 arithmetic: it must not wrap.
		if end := bdbHeaderSize + 2*entries; end > int(pageSize) || end > 0xffff {
			return fmt.Sprintf("hash page %d's %d entries do not fit in the page", pgno, entries), nil
		}
		for i := 1; i < entries; i += 2 { // values; keys are the even entries
			off := int(order.Uint16(page[bdbHeaderSize+2*i:]))
			if off >= int(pageSize) {
				return fmt.Sprintf("hash page %d's entry %d is at offset %d, past the page", pgno, i, off), nil
			}
			if page[off] != bdbHOffPage {
				continue
			}
			if off+bdbHOffSize > int(pageSize) || off+bdbHOffSize > 0xffff {
				return fmt.Sprintf("hash page %d's entry %d at offset %d runs past the page", pgno, i, off), nil
			}
			value = value[:0] // the value as go-rpmdb assembles it: an rpm header
			prev, prevDesc := pgno, "hash page"
			for next := int64(order.Uint32(page[off+4:])); next != 0; {
				if next >= pages {
					return fmt.Sprintf("%s %d's overflow chain points at page %d, past the last page %d", prevDesc, prev, next, last), nil
				}
				if used[next/64]&(1<<(next%64)) != 0 {
					return fmt.Sprintf("%s %d's overflow chain points at page %d, already part of an overflow chain", prevDesc, prev, next), nil
				}
				used[next/64] |= 1 << (next % 64)
				if _, err := f.ReadAt(ovf, next*pageSize); err != nil {
					return "", err
				}
				if ovf[25] != bdbOverflow {
					return fmt.Sprintf("%s %d's overflow chain points at page %d of type %s (want overflow)", prevDesc, prev, next, bdbPageType(ovf[25])), nil
				}
				after := int64(order.Uint32(ovf[16:20]))
				n := pageSize - bdbHeaderSize
				if after == 0 {
					// The last page holds hf_offset bytes (go-rpmdb slices
					// them with uint16 arithmetic too).
					n = int64(order.Uint16(ovf[22:24]))
					if bdbHeaderSize+n > pageSize || bdbHeaderSize+n > 0xffff {
						return fmt.Sprintf("overflow page %d says it holds %d bytes, more than the page", next, n), nil
					}
				}
				if len(value)+int(n) > cap(value) { // double: a value is read page by page
					value = slices.Grow(value, max(int(n), cap(value)))
				}
				value = append(value, ovf[bdbHeaderSize:bdbHeaderSize+n]...)
				prev, prevDesc, next = next, "overflow page", after
			}
			if p := checkHeader(value); p != "" {
				return fmt.Sprintf("the value of hash page %d's entry %d: %s", pgno, i, p), nil
			}
		}
	}
	return "", nil
}

// checkHeaderBlob checks the lengths at the start of an rpm header blob
// of length n against n, as go-rpmdb's hdrblobInit does, but before it
// allocates 16 bytes per claimed index entry.
func checkHeaderBlob(first []byte, n int64) string {
	if len(first) < 8 {
		return fmt.Sprintf("%d bytes is too short for an rpm header", n)
	}
	il := int64(int32(binary.BigEndian.Uint32(first[0:4])))
	dl := int64(int32(binary.BigEndian.Uint32(first[4:8])))
	if il < 1 || dl < 0 || 8+16*il+dl > n {
		return fmt.Sprintf("rpm header of %d index entries and %d data bytes does not fit in its %d bytes", il, dl, n)
	}
	return ""
}

// rpm header index entry types (rpm lib/header.c typeSizes, typeAlign);
// -1 is a string type, whose length strtaglen finds.
var (
	rpmTypeSize  = [10]int64{0, 1, 1, 2, 4, 8, -1, 1, -1, -1}
	rpmTypeAlign = [10]int64{1, 1, 1, 2, 4, 8, 1, 1, 1, 1}
)

// checkHeader checks a whole rpm header blob's index entries as rpm's
// hdrblobVerifyInfo does, which go-rpmdb's mirrors with two differences
// that make its walk cost more than one pass over the blob: its
// strtaglen, unlike rpm's, does not stop when a string's NUL is missing,
// but scans the rest of the data again for each string an entry claims
// (up to 2^32-1: minutes of CPU for one flipped bit), and its check that
// entries' data follow one another without overlapping is dead (its end
// is shadowed), so overlapping entries each scan the same data. Every
// entry rpm would refuse is refused (go-rpmdb refuses most of them too,
// but a length it computes in int32 can wrap and let it walk on).
func checkHeader(data []byte) string {
	n := int64(len(data))
	if p := checkHeaderBlob(data[:min(8, len(data))], n); p != "" {
		return p
	}
	il := int64(int32(binary.BigEndian.Uint32(data[0:4])))
	dl := int64(int32(binary.BigEndian.Uint32(data[4:8])))
	dataStart := 8 + 16*il
	dataEnd := dataStart + dl
	i := int64(0)
	// The region tag (HEADERIMAGE, HEADERSIGNATURES, HEADERIMMUTABLE)
	// is checked apart by rpm and go-rpmdb.
	if tag := int32(binary.BigEndian.Uint32(data[8:12])); tag >= 61 && tag <= 63 {
		i = 1
	}
	var end int64 // where the previous entry's data ends
	for ; i < il; i++ {
		e := data[8+16*i:]
		tag := int32(binary.BigEndian.Uint32(e[0:4]))
		typ := binary.BigEndian.Uint32(e[4:8])
		off := int64(int32(binary.BigEndian.Uint32(e[8:12])))
		count := int64(binary.BigEndian.Uint32(e[12:16]))
		bad := func(why string, args ...any) string {
			return fmt.Sprintf("rpm header index entry %d (tag %d, type %d, offset %d, count %d): ", i, tag, typ, off, count) + fmt.Sprintf(why, args...)
		}
		switch {
		case tag < 100:
			return bad("not a header tag")
		case typ >= uint32(len(rpmTypeSize)):
			return bad("not a data type")
		case off < 0 || off > dl:
			return bad("offset outside the %d data bytes", dl)
		case off%rpmTypeAlign[typ] != 0:
			return bad("offset not aligned for its type")
		case end > off:
			return bad("its data overlaps the previous entry's, which ends at %d", end)
		}
		start := dataStart + off
		var length int64
		if size := rpmTypeSize[typ]; size >= 0 {
			length = size * count
		} else {
			if typ == 6 && count != 1 {
				return bad("a string type with a count other than 1")
			}
			pos := start
			for c := int64(0); c < count; c++ { // at most dl rounds: each takes a byte
				k := bytes.IndexByte(data[pos:dataEnd], 0)
				if k < 0 {
					return bad("claims %d strings, but its data holds %d", count, c)
				}
				pos += int64(k) + 1
			}
			length = pos - start
		}
		if length <= 0 || off+length > dl {
			return bad("%d bytes of data, beyond the %d data bytes or none", length, dl)
		}
		end = off + length
	}
	return ""
}

// checkSQLite follows go-rpmdb's sqlite3.SQLite3.Read ("SELECT blob FROM
// Packages", each blob decoded as an rpm header), one row at a time: a
// missing table or a NULL blob would leave go-rpmdb's reader goroutine
// blocked on a second error, a header claiming more index entries than its
// blob holds makes it allocate 16 bytes per claimed entry (up to 32 GiB)
// before it checks, and index entries rpm refuses can make it scan a
// header's data billions of times (checkHeader). The database is opened
// read-only (go-rpmdb opens it read-write).
func checkSQLite(path string) (problem string, err error) {
	db, err := sql.Open("sqlite", "file:"+url.PathEscape(path)+"?mode=ro")
	if err != nil {
		return "", err
	}
	defer db.Close()
	rows, err := db.Query("SELECT rowid, blob IS NULL, blob FROM Packages")
	if err != nil {
		return fmt.Sprintf("SQLite database without a readable Packages table: %v", err), nil
	}
	defer rows.Close()
	for rows.Next() {
		var (
			row    int64
			null   bool
			header sql.RawBytes // as go-rpmdb scans it: TEXT and numbers as their text
		)
		if err := rows.Scan(&row, &null, &header); err != nil {
			return fmt.Sprintf("SQLite Packages row: %v", err), nil
		}
		if null {
			return fmt.Sprintf("SQLite Packages row %d has no blob (NULL)", row), nil
		}
		if p := checkHeader(header); p != "" {
			return fmt.Sprintf("SQLite Packages row %d: %s", row, p), nil
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Sprintf("SQLite Packages table: %v", err), nil
	}
	return "", nil
}

// NDB layout (rpm lib/backend/ndb/rpmpkg.c, as go-rpmdb reads it).
const (
	ndbHeaderMagic = 'R' | 'p'<<8 | 'm'<<16 | 'P'<<24
	ndbSlotMagic   = 'S' | 'l'<<8 | 'o'<<16 | 't'<<24
	ndbBlobMagic   = 'B' | 'l'<<8 | 'b'<<16 | 'S'<<24
	ndbSlotPage    = 4096
	ndbSlotSize    = 16
	ndbBlobHeader  = 16
	ndbMaxPages    = 2048 // go-rpmdb's own limit
)

// isNDB says whether go-rpmdb's ndb.Open takes the file as NDB.
func isNDB(h []byte) bool {
	return binary.LittleEndian.Uint32(h[0:4]) == ndbHeaderMagic &&
		binary.LittleEndian.Uint32(h[4:8]) == 0 && // version
		binary.LittleEndian.Uint32(h[12:16]) != 0 // slot pages
}

// checkNDB follows go-rpmdb's ndb.RpmNDB.Read: every used slot's blob
// must be within the file, start with the blob magic and the slot's
// package index, and hold an rpm header that fits in it.
func checkNDB(f io.ReaderAt, size int64, head []byte) (problem string, err error) {
	npages := int64(binary.LittleEndian.Uint32(head[12:16]))
	if npages > ndbMaxPages {
		return fmt.Sprintf("%d NDB slot pages is more than %d", npages, ndbMaxPages), nil
	}
	if npages*ndbSlotPage > size {
		return fmt.Sprintf("%d NDB slot pages of %d bytes, but the file holds %d bytes", npages, ndbSlotPage, size), nil
	}
	slots := make([]byte, npages*ndbSlotPage-32) // the first two slots are the header
	if _, err := f.ReadAt(slots, 32); err != nil {
		return "", err
	}
	var blob [ndbBlobHeader]byte
	var header []byte // one blob's rpm header at a time, no longer than the file
	for i := 0; i+ndbSlotSize <= len(slots); i += ndbSlotSize {
		s := slots[i : i+ndbSlotSize]
		slot := i/ndbSlotSize + 2
		if m := binary.LittleEndian.Uint32(s[0:4]); m != ndbSlotMagic {
			return fmt.Sprintf("NDB slot %d has a bad magic %#x", slot, m), nil
		}
		pkg := binary.LittleEndian.Uint32(s[4:8])
		if pkg == 0 {
			continue
		}
		off := int64(binary.LittleEndian.Uint32(s[8:12])) * ndbBlobHeader
		if off+ndbBlobHeader > size {
			return fmt.Sprintf("NDB slot %d (package %d) points at offset %d, past the end of the file (%d bytes)", slot, pkg, off, size), nil
		}
		if _, err := f.ReadAt(blob[:], off); err != nil {
			return "", err
		}
		if m := binary.LittleEndian.Uint32(blob[0:4]); m != ndbBlobMagic {
			return fmt.Sprintf("NDB slot %d (package %d) points at offset %d, which has a bad blob magic %#x", slot, pkg, off, m), nil
		}
		if p := binary.LittleEndian.Uint32(blob[4:8]); p != pkg {
			return fmt.Sprintf("NDB slot %d (package %d) points at the blob of package %d", slot, pkg, p), nil
		}
		length := int64(binary.LittleEndian.Uint32(blob[12:16]))
		if off+ndbBlobHeader+length > size {
			return fmt.Sprintf("NDB blob of package %d at offset %d claims %d bytes, past the end of the file (%d bytes)", pkg, off, length, size), nil
		}
		header = slices.Grow(header[:0], int(length))[:length]
		if _, err := f.ReadAt(header, off+ndbBlobHeader); err != nil {
			return "", err
		}
		if p := checkHeader(header); p != "" {
			return fmt.Sprintf("NDB blob of package %d: %s", pkg, p), nil
		}
	}
	return "", nil
}
