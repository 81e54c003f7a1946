// Package atomicfile replaces files so that a crash at any moment leaves
// either the old or the new content, never a torn file.
package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
)

// Write replaces path with data at mode: a temporary file in the same
// directory, fsync, rename over path, fsync of the directory.
func Write(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	err = errors.Join(err, f.Chmod(mode), f.Sync(), f.Close())
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	return SyncDir(dir)
}

// SyncDir makes the entries of dir (renames, links, removals) durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
