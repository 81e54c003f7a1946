package vulnscan

import (
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hids/vigil/plugins/vulnscan/collect"
)

// BenchmarkReadRPM compares reading an rpm database in the plugin's
// process with reading it in the reader child: the fixture (1 package)
// and, when go-rpmdb's source is in the module cache, its largest test
// database (CentOS 7, 33 MB, 395 packages).
func BenchmarkReadRPM(b *testing.B) {
	dbs := map[string]string{"fixture-1pkg": fixtureDB(b)}
	if out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/knqyf263/go-rpmdb").Output(); err == nil {
		dbs["centos7-395pkg"] = filepath.Join(strings.TrimSpace(string(out)), "pkg", "testdata", "centos7-many", "Packages")
	}
	for name, path := range dbs {
		b.Run(name+"/in-process", func(b *testing.B) {
			for b.Loop() {
				if _, err := collect.ReadRPM(path); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/check-only", func(b *testing.B) {
			for b.Loop() {
				if err := collect.CheckRPM(path); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/child", func(b *testing.B) {
			for b.Loop() {
				if _, err := readRPMIsolated(context.Background(), path, time.Minute); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func fixtureDB(b *testing.B) string {
	in, err := os.Open(filepath.Join("collect", "testdata", "rpm", "Packages.gz"))
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	zr, err := gzip.NewReader(in)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "Packages")
	out, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(out, zr); err != nil {
		b.Fatal(err)
	}
	if err := out.Close(); err != nil {
		b.Fatal(err)
	}
	return path
}
