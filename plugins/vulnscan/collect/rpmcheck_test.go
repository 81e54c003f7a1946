package collect_test

import (
	"bytes"
	"compress/gzip"
	"database/sql"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/plugins/vulnscan/collect"
)

// readFixture returns the uncompressed rpm fixture name.
func readFixture(tb testing.TB, name string) []byte {
	tb.Helper()
	in, err := os.Open(filepath.Join("testdata", "rpm", name))
	if err != nil {
		tb.Fatal(err)
	}
	defer in.Close()
	zr, err := gzip.NewReader(in)
	if err != nil {
		tb.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// The Berkeley DB fixture (RHEL 8's libuuid, little-endian, 4096-byte
// pages): page 0 is the metadata, page 1 a hash page with one on-page
// item, page 2 a hash page whose value is an H_OFFPAGE item at offset
// 4079 pointing at the overflow chain 3 → 4 → … → 22.
const (
	bdbPage    = 4096
	bdbOffItem = 2*bdbPage + 4079
)

func putU32(b []byte, off int, v uint32) { binary.LittleEndian.PutUint32(b[off:], v) }

// TestCheckRPMRefusesCorruptBerkeleyDB feeds ReadRPM Berkeley DB files
// that go-rpmdb v0.1.1 would never finish reading (or would read into
// unbounded memory, or panic on in its own goroutine, ending the process)
// and checks that each now returns an error naming the file and the
// problem. The first is the input the earlier fuzz run found: one bit
// flipped in the type byte of an overflow page in the middle of the chain
// makes go-rpmdb's bdb.HashPageValueContent re-read that page forever.
func TestCheckRPMRefusesCorruptBerkeleyDB(t *testing.T) {
	tests := []struct {
		name    string
		corrupt func(b []byte)
		want    string
	}{
		{name: "chain through a page of another type (the hang)", corrupt: func(b []byte) { b[12*bdbPage+25] ^= 8 },
			want: "overflow page 11's overflow chain points at page 12 of type 15 (want overflow)"},
		{name: "value points at a hash page", corrupt: func(b []byte) { putU32(b, bdbOffItem+4, 1) },
			want: "hash page 2's overflow chain points at page 1 of type hash (want overflow)"},
		{name: "chain loops (unbounded memory)", corrupt: func(b []byte) { putU32(b, 22*bdbPage+16, 3) },
			want: "overflow page 22's overflow chain points at page 3, already part of an overflow chain"},
		{name: "chain past the last page", corrupt: func(b []byte) { putU32(b, 10*bdbPage+16, 4000) },
			want: "overflow page 10's overflow chain points at page 4000, past the last page 22"},
		{name: "metadata claims more pages than the file", corrupt: func(b []byte) { putU32(b, 32, 1<<20) },
			want: "the metadata's last page is 1048576 of 4096 bytes, but the file holds 94208 bytes"},
		{name: "bad page size", corrupt: func(b []byte) { putU32(b, 20, 4095) }, want: "page size 4095 is not a Berkeley DB page size"},
		{name: "entries past the page (panic in go-rpmdb's goroutine)", corrupt: func(b []byte) { binary.LittleEndian.PutUint16(b[2*bdbPage+20:], 4000) },
			want: "hash page 2's 4000 entries do not fit in the page"},
		{name: "value offset past the page", corrupt: func(b []byte) {
			binary.LittleEndian.PutUint16(b[2*bdbPage+28:], 4094)
			b[2*bdbPage+4094] = 3 // H_OFFPAGE
		},
			want: "hash page 2's entry 1 at offset 4094 runs past the page"},
		{name: "last overflow page longer than a page", corrupt: func(b []byte) { binary.LittleEndian.PutUint16(b[22*bdbPage+22:], 5000) },
			want: "overflow page 22 says it holds 5000 bytes, more than the page"},
		{name: "rpm header claiming 2^28 index entries", corrupt: func(b []byte) { binary.BigEndian.PutUint32(b[3*bdbPage+26:], 1<<28) },
			want: "the value of hash page 2's entry 1: rpm header of 268435456 index entries and"},
		{name: "not a database", corrupt: func(b []byte) { copy(b, make([]byte, 512)) }, want: "not an rpm database"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := readFixture(t, "Packages.gz")
			tt.corrupt(b)
			path := filepath.Join(t.TempDir(), "Packages")
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := collect.ReadRPM(path)
			if err == nil || !errors.Is(err, collect.ErrCorruptRPM) {
				t.Fatalf("ReadRPM = %v, want ErrCorruptRPM", err)
			}
			if want := "rpm database " + path + ": " + tt.want; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q\nwant %q", err, want)
			}
		})
	}
}

// The NDB fixture (SUSE 15): header, slot pages, then blobs; slot 2 is the
// first used one.
func TestCheckRPMRefusesCorruptNDB(t *testing.T) {
	b := readFixture(t, "Packages.db.gz")
	slot := -1 // offset of the first used slot
	for off := 32; off+16 <= 4096; off += 16 {
		if binary.LittleEndian.Uint32(b[off+4:]) != 0 {
			slot = off
			break
		}
	}
	if slot < 0 {
		t.Fatal("no used slot in the NDB fixture")
	}
	blob := int(binary.LittleEndian.Uint32(b[slot+8:])) * 16
	tests := []struct {
		name    string
		corrupt func(b []byte)
		want    string
	}{
		{name: "blob length of 4 GiB (allocated by go-rpmdb)", corrupt: func(b []byte) { putU32(b, blob+12, 0xfffffff0) }, want: "claims 4294967280 bytes, past the end of the file"},
		{name: "blob offset past the file", corrupt: func(b []byte) { putU32(b, slot+8, 0x7fffffff) }, want: "past the end of the file"},
		{name: "bad blob magic (go-rpmdb's reader blocks forever)", corrupt: func(b []byte) { b[blob] ^= 1 }, want: "which has a bad blob magic"},
		{name: "blob of another package", corrupt: func(b []byte) { putU32(b, blob+4, 999) }, want: "points at the blob of package 999"},
		{name: "bad slot magic", corrupt: func(b []byte) { b[slot] ^= 1 }, want: "has a bad magic"},
		{name: "too many slot pages", corrupt: func(b []byte) { putU32(b, 12, 4096) }, want: "4096 NDB slot pages is more than 2048"},
		{name: "header index count", corrupt: func(b []byte) { binary.BigEndian.PutUint32(b[blob+16:], 1<<27) }, want: "rpm header of 134217728 index entries"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := bytes.Clone(b)
			tt.corrupt(c)
			path := filepath.Join(t.TempDir(), "Packages.db")
			if err := os.WriteFile(path, c, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := collect.ReadRPM(path)
			if !errors.Is(err, collect.ErrCorruptRPM) || !strings.HasPrefix(err.Error(), "rpm database "+path+": ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ReadRPM = %v, want ErrCorruptRPM naming %s and saying %q", err, path, tt.want)
			}
		})
	}
}

// TestCheckRPMRefusesCorruptSQLite changes the SQLite fixture (Fedora)
// through SQL: a header claiming 2^31-1 index entries (go-rpmdb would
// allocate 32 GiB for them before checking), an empty blob, and a database
// without the Packages table (go-rpmdb's reader goroutine would block on
// its second error) are refused, naming the row.
func TestCheckRPMRefusesCorruptSQLite(t *testing.T) {
	b := readFixture(t, "rpmdb.sqlite.gz")
	first := "(SELECT min(rowid) FROM Packages)"
	tests := []struct {
		name, sql, want string
	}{
		{name: "header index count of 2^31-1", sql: "UPDATE Packages SET blob = CAST(X'7fffffff00000000' || substr(blob, 9) AS BLOB) WHERE rowid = " + first,
			want: "rpm header of 2147483647 index entries"},
		{name: "empty blob", sql: "UPDATE Packages SET blob = X'' WHERE rowid = " + first, want: "0 bytes is too short for an rpm header"},
		{name: "no Packages table", sql: "DROP TABLE Packages", want: "SQLite database without a readable Packages table"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "rpmdb.sqlite")
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			db, err := sql.Open("sqlite", path)
			if err != nil {
				t.Fatal(err)
			}
			_, err = db.Exec(tt.sql)
			db.Close()
			if err != nil {
				t.Fatal(err)
			}
			_, err = collect.ReadRPM(path)
			if !errors.Is(err, collect.ErrCorruptRPM) || !strings.HasPrefix(err.Error(), "rpm database "+path+": ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ReadRPM = %v, want ErrCorruptRPM naming %s and saying %q", err, path, tt.want)
			}
		})
	}
}

// firstStringArray returns the offset in hdr (an rpm header blob) of the
// count of its first index entry, after the region tag, of type
// STRING_ARRAY (8), and the offset of the entry's own start.
func firstStringArray(tb testing.TB, hdr []byte) (count, entry int) {
	tb.Helper()
	il := int(binary.BigEndian.Uint32(hdr))
	for i := 1; i < il && 8+16*i+16 <= len(hdr); i++ {
		if e := 8 + 16*i; binary.BigEndian.Uint32(hdr[e+4:]) == 8 {
			return e + 12, e
		}
	}
	tb.Fatal("no STRING_ARRAY entry in the header")
	return 0, 0
}

// TestCheckRPMRefusesHeaderStringCounts: a string array entry whose count
// claims more strings than the header's data holds makes go-rpmdb's
// strtaglen scan the rest of the data once per missing string (up to 2^32
// times: minutes of CPU for one flipped bit; rpm's own strtaglen stops),
// and entries whose data overlap (which rpm refuses) make it scan the same
// data once per entry. Both are refused, in every format, by CheckRPM
// (checked first, so a missed refusal fails fast instead of hanging).
func TestCheckRPMRefusesHeaderStringCounts(t *testing.T) {
	bdb := readFixture(t, "Packages.gz")
	ndb := readFixture(t, "Packages.db.gz")
	slot := 32
	for binary.LittleEndian.Uint32(ndb[slot+4:]) == 0 {
		slot += 16
	}
	ndbHdr := int(binary.LittleEndian.Uint32(ndb[slot+8:]))*16 + 16
	const bdbHdr = 3*bdbPage + 26 // the value's first overflow page's data
	setCount := func(b []byte, hdr int) {
		c, _ := firstStringArray(t, b[hdr:])
		binary.BigEndian.PutUint32(b[hdr+c:], 0xffffffff)
	}
	overlap := func(b []byte, hdr int) {
		_, e := firstStringArray(t, b[hdr:])
		// The next entry's data starts where this one's does.
		copy(b[hdr+e+16+8:hdr+e+16+12], b[hdr+e+8:hdr+e+12])
	}
	sqliteWith := func(t *testing.T, path string, change func(blob []byte)) {
		t.Helper()
		db, err := sql.Open("sqlite", path)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var blob []byte
		if err := db.QueryRow("SELECT blob FROM Packages WHERE rowid = (SELECT min(rowid) FROM Packages)").Scan(&blob); err != nil {
			t.Fatal(err)
		}
		change(blob)
		if _, err := db.Exec("UPDATE Packages SET blob = ? WHERE rowid = (SELECT min(rowid) FROM Packages)", blob); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, file string
		make       func(t *testing.T, path string)
		want       string
	}{
		{"berkeley db count", "Packages", func(t *testing.T, path string) {
			b := bytes.Clone(bdb)
			setCount(b, bdbHdr)
			writeFile(t, path, b)
		}, "claims 4294967295 strings"},
		{"ndb count", "Packages.db", func(t *testing.T, path string) {
			b := bytes.Clone(ndb)
			setCount(b, ndbHdr)
			writeFile(t, path, b)
		}, "claims 4294967295 strings"},
		{"sqlite count", "rpmdb.sqlite", func(t *testing.T, path string) {
			writeFile(t, path, readFixture(t, "rpmdb.sqlite.gz"))
			sqliteWith(t, path, func(blob []byte) { setCount(blob, 0) })
		}, "claims 4294967295 strings"},
		{"sqlite overlap", "rpmdb.sqlite", func(t *testing.T, path string) {
			writeFile(t, path, readFixture(t, "rpmdb.sqlite.gz"))
			sqliteWith(t, path, func(blob []byte) { overlap(blob, 0) })
		}, "overlaps"},
		{"berkeley db overlap", "Packages", func(t *testing.T, path string) {
			b := bytes.Clone(bdb)
			overlap(b, bdbHdr)
			writeFile(t, path, b)
		}, "overlaps"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), tt.file)
			tt.make(t, path)
			err := collect.CheckRPM(path)
			if !errors.Is(err, collect.ErrCorruptRPM) || !strings.HasPrefix(err.Error(), "rpm database "+path+": ") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("CheckRPM = %v, want ErrCorruptRPM naming %s and saying %q", err, path, tt.want)
			}
			if _, err := collect.ReadRPM(path); !errors.Is(err, collect.ErrCorruptRPM) {
				t.Errorf("ReadRPM = %v, want ErrCorruptRPM", err)
			}
		})
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCheckRPMAcceptsRealDatabases runs CheckRPM over the fixtures and over
// go-rpmdb's own test databases (CentOS 5–8, UBI 8 on s390x, big-endian;
// SUSE 15 NDB; SQLite) when the module's source is in the module cache:
// a check that refused a real database would lose a host's inventory.
func TestCheckRPMAcceptsRealDatabases(t *testing.T) {
	for _, name := range []string{"Packages.gz", "Packages.db.gz", "rpmdb.sqlite.gz"} {
		path := filepath.Join(t.TempDir(), strings.TrimSuffix(name, ".gz"))
		if err := os.WriteFile(path, readFixture(t, name), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := collect.CheckRPM(path); err != nil {
			t.Errorf("fixture %s: %v", name, err)
		}
	}
	small := filepath.Join(t.TempDir(), "Packages.db")
	if err := os.WriteFile(small, shrinkNDB(t, readFixture(t, "Packages.db.gz")), 0o644); err != nil {
		t.Fatal(err)
	}
	if pkgs, err := collect.ReadRPM(small); err != nil || len(pkgs) != 2 {
		t.Errorf("the fuzz seed cut from the NDB fixture: %d packages, %v", len(pkgs), err)
	}
	if testing.Short() {
		t.Skip("-short: go-rpmdb's test databases (220 MB) not read")
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/knqyf263/go-rpmdb").Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		t.Skipf("go-rpmdb's source is not in the module cache (%v): only the fixtures were checked", err)
	}
	dbs, _ := filepath.Glob(filepath.Join(dir, "pkg", "testdata", "*", "*"))
	n := 0
	for _, path := range dbs {
		if base := filepath.Base(path); base != "Packages" && base != "Packages.db" && base != "rpmdb.sqlite" {
			continue
		}
		n++
		if err := collect.CheckRPM(path); err != nil {
			t.Errorf("%v", err)
		}
		pkgs, err := collect.ReadRPM(path)
		if err != nil || len(pkgs) == 0 {
			t.Errorf("ReadRPM(%s) = %d packages, %v", path, len(pkgs), err)
		}
	}
	t.Logf("%d of go-rpmdb's test databases accepted", n)
}

// FuzzReadRPM feeds ReadRPM bit-flipped rpm databases of the three
// formats. ReadRPM must return (an error is fine) and never panic; a run
// that has not returned after 5 s is reported as a hang, so a hang
// is a failing input like a crash instead of a stuck fuzzer. (The bound is
// a failure bound only: a healthy input takes milliseconds.)
func FuzzReadRPM(f *testing.F) {
	bdb := readFixture(f, "Packages.gz")
	ndb := shrinkNDB(f, readFixture(f, "Packages.db.gz"))
	sql := readFixture(f, "rpmdb.sqlite.gz")
	f.Add(bdb)
	f.Add(ndb)
	f.Add(sql)
	flip := func(b []byte, off int, bit byte) []byte {
		c := bytes.Clone(b)
		c[off] ^= bit
		return c
	}
	// The hang the first fuzz run found, and neighbours of it.
	for _, pg := range []int{3, 12, 22} {
		f.Add(flip(bdb, pg*bdbPage+25, 8))
		f.Add(flip(bdb, pg*bdbPage+16, 2))
	}
	f.Add(flip(bdb, bdbOffItem+4, 2))
	f.Add(flip(bdb, 32, 0x40))
	f.Add(flip(ndb, 12, 4))
	f.Add(flip(ndb, 4096+12, 0x80))
	f.Add(flip(sql, 100, 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "Packages")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			pkgs, err := collect.ReadRPM(path)
			for _, p := range pkgs {
				if p.Name == "" || p.Name == "gpg-pubkey" {
					t.Errorf("package %+v", p)
				}
			}
			done <- err
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("ReadRPM did not return within 5s on this input (%d bytes)", len(b))
		}
	})
}

// shrinkNDB cuts the NDB fixture (1.3 MB, 35 packages) down to its header,
// one slot page and the blobs of its first two packages, so the fuzzer
// mutates a small input.
func shrinkNDB(tb testing.TB, b []byte) []byte {
	tb.Helper()
	out := bytes.Clone(b[:4096])
	putU32(out, 12, 1) // one slot page
	kept := 0
	for off := 32; off+16 <= 4096; off += 16 {
		if binary.LittleEndian.Uint32(out[off+4:]) == 0 {
			continue
		}
		if kept == 2 {
			putU32(out, off+4, 0) // free
			continue
		}
		kept++
		blk := int(binary.LittleEndian.Uint32(out[off+8:]))
		cnt := int(binary.LittleEndian.Uint32(out[off+12:]))
		putU32(out, off+8, uint32(len(out)/16))
		out = append(out, b[blk*16:(blk+cnt)*16]...)
	}
	if kept != 2 {
		tb.Fatal("the NDB fixture has fewer than two packages")
	}
	return out
}

// BenchmarkCheckRPMSQLite is the pre-check's cost on the SQLite fixture
// (Fedora), against the whole read it guards.
func BenchmarkCheckRPMSQLite(b *testing.B) {
	path := filepath.Join(b.TempDir(), "rpmdb.sqlite")
	if err := os.WriteFile(path, readFixture(b, "rpmdb.sqlite.gz"), 0o644); err != nil {
		b.Fatal(err)
	}
	b.Run("check", func(b *testing.B) {
		for b.Loop() {
			if err := collect.CheckRPM(path); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("read", func(b *testing.B) {
		for b.Loop() {
			if _, err := collect.ReadRPM(path); err != nil {
				b.Fatal(err)
			}
		}
	})
}
