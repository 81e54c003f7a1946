package osv

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// maxFile bounds one advisory file; osv.dev's largest are well under 1 MB.
const maxFile = 16 << 20

// maxErrors bounds the errors a Result keeps; the rest are counted.
const maxErrors = 100

// Result is what an import read.
type Result struct {
	Advisories []*Advisory
	// Files is the number of advisory files read.
	Files int
	// Ignored counts advisories with no supported ecosystem, and
	// withdrawn ones.
	Ignored int
	// Skipped counts bad advisories and unreadable files; Errors says why
	// for the first ones, each naming the file and the field.
	Skipped int
	Errors  []error
}

// Partial says whether anything was skipped.
func (r *Result) Partial() bool { return r.Skipped > 0 }

func (r *Result) fail(err error) {
	r.Skipped++
	if len(r.Errors) < maxErrors {
		r.Errors = append(r.Errors, err)
	}
}

// Import reads advisories from each path: a JSON file (one advisory, or an
// array of them), a zip archive of JSON files, or a directory searched
// for both. Problems with one file or advisory are recorded in the result
// and the import goes on; err is set only when a path cannot be read at
// all.
func Import(paths ...string) (*Result, error) {
	r := &Result{}
	for _, p := range paths {
		err := filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if path == p {
					return err
				}
				r.fail(fmt.Errorf("%s: %w", path, err))
				return nil
			}
			if d.IsDir() {
				return nil
			}
			switch strings.ToLower(filepath.Ext(path)) {
			case ".json":
				b, err := readFile(path)
				if err != nil {
					r.fail(err)
					return nil
				}
				r.add(path, b)
			case ".zip":
				r.addZip(path)
			default:
				if path == p {
					r.fail(fmt.Errorf("%s: not a .json or .zip file", path))
				}
			}
			return nil
		})
		if err != nil {
			return r, fmt.Errorf("importing %s: %w", p, err)
		}
	}
	return r, nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAll(path, f)
}

func readAll(name string, rd io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(rd, maxFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(b) > maxFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, maxFile)
	}
	return b, nil
}

func (r *Result) addZip(path string) {
	zr, err := zip.OpenReader(path)
	if err != nil {
		r.fail(fmt.Errorf("%s: %w", path, err))
		return
	}
	defer zr.Close()
	for _, f := range zr.File {
		if f.FileInfo().IsDir() || !strings.EqualFold(filepath.Ext(f.Name), ".json") {
			continue
		}
		name := path + "!" + f.Name
		rc, err := f.Open()
		if err != nil {
			r.fail(fmt.Errorf("%s: %w", name, err))
			continue
		}
		b, err := readAll(name, rc)
		rc.Close()
		if err != nil {
			r.fail(err)
			continue
		}
		r.add(name, b)
	}
}

// add parses one file's content, an advisory or an array of them.
func (r *Result) add(name string, b []byte) {
	r.Files++
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '[' {
		var list []json.RawMessage
		if err := json.Unmarshal(b, &list); err != nil {
			r.fail(fmt.Errorf("%s: %w: %v", name, ErrInvalid, err))
			return
		}
		for i, item := range list {
			r.addOne(fmt.Sprintf("%s[%d]", name, i), item)
		}
		return
	}
	r.addOne(name, b)
}

func (r *Result) addOne(name string, b []byte) {
	a, err := Parse(b)
	switch {
	case errors.Is(err, ErrNotApplicable):
		r.Ignored++
	case err != nil:
		r.fail(fmt.Errorf("%s: %w", name, err))
	default:
		r.Advisories = append(r.Advisories, a)
	}
}
