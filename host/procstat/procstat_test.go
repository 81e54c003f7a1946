package procstat

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseStat(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		want    Stat
		wantErr bool
	}{
		{
			name: "comm with spaces and parentheses",
			file: "proc/4242/stat",
			want: Stat{PID: 4242, Comm: "vigil (x) plug", State: 'S', PPID: 1,
				UTime: 2500 * time.Millisecond, STime: 500 * time.Millisecond,
				CUTime: 70 * time.Millisecond, CSTime: 30 * time.Millisecond,
				Threads: 12, StartTicks: 71955, RSSPages: 2560},
		},
		{
			name: "negative child times clamp to zero",
			file: "stat-short-negative.txt",
			want: Stat{PID: 1, Comm: "systemd", State: 'S', UTime: 50 * time.Millisecond,
				STime: 3 * time.Second, Threads: 1, StartTicks: 10, RSSPages: 3000},
		},
		{name: "real kernel 6.18 line", file: "stat-kernel618.txt",
			want: Stat{PID: 17239, Comm: "cp", State: 'R', PPID: 17183, Threads: 1, StartTicks: 75979, RSSPages: 499}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStat(readFixture(t, tt.file), true)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("ParseStat = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestReadFromReader(t *testing.T) {
	f, err := os.Open("testdata/proc/4250/stat")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := ReadStat(f)
	if err != nil || st.PID != 4250 || st.Comm != "sh" || st.UTime != time.Second {
		t.Fatalf("ReadStat = %+v, %v", st, err)
	}
	m, err := ReadStatm(strings.NewReader("500 256 100 5 0 50 0\n"))
	if err != nil || m != (Statm{500, 256, 100}) {
		t.Fatalf("ReadStatm = %+v, %v", m, err)
	}
}

func TestParseStatErrors(t *testing.T) {
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"no comm", "12 S 1 2 3"},
		{"truncated", "12 (x) S 1 2 3 4 5 6 7 8 9 10 11"},
		{"letters in utime", "12 (x) S 1 2 3 4 5 6 7 8 9 10 zz 1 1 1 1 1 1 1 1 1 1"},
		{"bad pid", "x2 (x) S 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseStat([]byte(tt.in), true); !errors.Is(err, ErrFormat) {
				t.Fatalf("ParseStat(%q) error = %v, want ErrFormat", tt.in, err)
			}
		})
	}
}

func TestParseStatm(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Statm
		wantErr bool
	}{
		{name: "fixture", in: string(readFixture(t, "proc/4242/statm")), want: Statm{10000, 2560, 300}},
		{name: "no newline", in: "1 2 3", want: Statm{1, 2, 3}},
		{name: "short", in: "1 2", wantErr: true},
		{name: "garbage", in: "a b c", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStatm([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Errorf("ParseStatm = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestTreeFixture(t *testing.T) {
	got, err := Tree("testdata/proc", 4242)
	if err != nil {
		t.Fatal(err)
	}
	// 4242: 250+50+7+3 ticks, 4250: 100, 4251: 40+10.
	want := Sample{CPU: 4600 * time.Millisecond, Own: 4500 * time.Millisecond, RSS: (2560 + 256 + 512) * pageSize, Procs: 3}
	if got != want {
		t.Errorf("Tree = %+v, want %+v", got, want)
	}
	p, err := Open("testdata/proc", 4242)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	one, err := p.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if wantOne := (Sample{CPU: 3100 * time.Millisecond, Own: 3 * time.Second, RSS: 2560 * pageSize, Procs: 1}); one != wantOne {
		t.Errorf("Proc.Sample = %+v, want %+v", one, wantOne)
	}
}

// TestProcRealProcess samples a real busy child and checks that its CPU time
// grows, that the handle survives pid reuse checks and reports ErrGone after
// the child is reaped.
func TestProcRealProcess(t *testing.T) {
	cmd := exec.Command("sh", "-c", "while :; do :; done")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	p, err := Open("", cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	first, err := p.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if first.RSS == 0 {
		t.Errorf("RSS of a live shell = 0")
	}
	var later Sample
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); { // a loaded box may not run it at once
		time.Sleep(10 * time.Millisecond)
		if later, err = p.Sample(); err != nil {
			t.Fatal(err)
		}
		if later.CPU > first.CPU {
			break
		}
	}
	if later.CPU <= first.CPU {
		t.Fatalf("CPU time of a busy loop did not grow: %v then %v", first.CPU, later.CPU)
	}
	tree, err := Tree("", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if tree.Procs < 2 {
		t.Errorf("Tree(self).Procs = %d, want the test and its child", tree.Procs)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if _, err := p.Sample(); !errors.Is(err, ErrGone) {
		t.Errorf("Sample after exit: err = %v, want ErrGone", err)
	}
	if _, err := Open("", cmd.Process.Pid); !errors.Is(err, ErrGone) {
		t.Errorf("Open after exit: err = %v, want ErrGone", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestSampleDoesNotAllocate(t *testing.T) {
	p, err := Open("", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if n := testing.AllocsPerRun(100, func() {
		if _, err := p.Sample(); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Sample allocates %v times per call, want 0", n)
	}
}

func FuzzParseStat(f *testing.F) {
	for _, name := range []string{"proc/4242/stat", "proc/4250/stat", "stat-short-negative.txt", "stat-kernel618.txt"} {
		f.Add(readFixture(f, name))
	}
	f.Add([]byte("1 ()) ) S"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseStat(b, true)
		if err != nil {
			return
		}
		if s.UTime < 0 || s.STime < 0 || s.CUTime < 0 || s.CSTime < 0 || s.PID < 0 {
			t.Fatalf("negative field from %q: %+v", b, s)
		}
	})
}

func FuzzParseStatm(f *testing.F) {
	f.Add(readFixture(f, "proc/4242/statm"))
	f.Add([]byte("1 2"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseStatm(b)
	})
}

func BenchmarkProcSample(b *testing.B) {
	p, err := Open("", os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Sample(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTree(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Tree("", os.Getpid()); err != nil {
			b.Fatal(err)
		}
	}
}
