package version_test

import (
	"errors"
	"testing"

	"github.com/vigil-hids/vigil/vuln/version"
)

// cmpCase says a compares to b as want (-1, 0, +1).
type cmpCase struct {
	name string
	a, b string
	want int
}

func runCases(t *testing.T, k version.Kind, cases []cmpCase) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			if got := version.Compare(k, tt.a, tt.b); got != tt.want {
				t.Errorf("Compare(%s, %q, %q) = %d, want %d", k, tt.a, tt.b, got, tt.want)
			}
			if got := version.Compare(k, tt.b, tt.a); got != -tt.want {
				t.Errorf("Compare(%s, %q, %q) = %d, want %d (antisymmetry)", k, tt.b, tt.a, got, -tt.want)
			}
		})
	}
}

// TestDpkg takes most cases from dpkg's own lib/dpkg/t/t-version.c and
// Debian Policy §5.6.12.
func TestDpkg(t *testing.T) {
	runCases(t, version.Dpkg, []cmpCase{
		{name: "equal", a: "1.0-1", b: "1.0-1", want: 0},
		{name: "zero epoch is no epoch", a: "0:1.0-1", b: "1.0-1", want: 0},
		{name: "epoch beats upstream", a: "1:0.1-1", b: "9.9-9", want: 1},
		{name: "higher epoch", a: "2:1.0", b: "1:9.0", want: 1},
		{name: "epoch zero vs one", a: "0:1.1", b: "1:1.0", want: -1},
		{name: "upstream numeric", a: "1.10", b: "1.9", want: 1},
		{name: "upstream longer", a: "1.0.1", b: "1.0", want: 1},
		{name: "revision", a: "1.0-2", b: "1.0-10", want: -1},
		{name: "no revision is lowest revision", a: "1.0", b: "1.0-0", want: 0},
		{name: "tilde before release", a: "1.0~rc1", b: "1.0", want: -1},
		{name: "tilde before tilde-less rc", a: "1.0~rc1", b: "1.0~rc2", want: -1},
		{name: "double tilde first", a: "1.0~~", b: "1.0~", want: -1},
		{name: "tilde in policy order", a: "1.0~~a", b: "1.0~", want: -1},
		{name: "tilde before empty", a: "1.0~", b: "1.0", want: -1},
		{name: "empty before plus", a: "1.0", b: "1.0+b1", want: -1},
		{name: "letters before non-letters", a: "1.0a", b: "1.0+", want: -1},
		{name: "letters order", a: "1.0a", b: "1.0b", want: -1},
		{name: "tilde in revision", a: "1.0-1~bpo1", b: "1.0-1", want: -1},
		{name: "debian security revision", a: "2.36-9+deb12u4", b: "2.36-9+deb12u3", want: 1},
		{name: "ubuntu revision", a: "1.1.1f-1ubuntu2.20", b: "1.1.1f-1ubuntu2.3", want: 1},
		{name: "openssl debian", a: "3.0.11-1~deb12u2", b: "3.0.11-1", want: -1},
		{name: "leading zeros", a: "1.001", b: "1.1", want: 0},
		{name: "hyphen in upstream", a: "1.2-3-4", b: "1.2-3-5", want: -1},
		{name: "colon in upstream", a: "1:1.2:3", b: "1:1.2:4", want: -1},
		{name: "t-version 1", a: "0:0-0", b: "0:0-0", want: 0},
		{name: "t-version 2", a: "0:0.0-0", b: "0:0-0", want: 1},
		{name: "t-version 3", a: "1:2-3", b: "1:2-3", want: 0},
		{name: "t-version 4", a: "0:0-0", b: "1:0-0", want: -1},
		{name: "t-version 5", a: "0:0-0", b: "0:1-0", want: -1},
		{name: "t-version 6", a: "0:0-0", b: "0:0-1", want: -1},
		{name: "t-version 7", a: "0:0-0", b: "0:0a-0", want: -1},
		{name: "t-version 8", a: "0:0a-0", b: "0:0b-0", want: -1},
		{name: "t-version 9", a: "0:0-0", b: "0:0-a", want: -1},
		{name: "t-version 10", a: "0:0-a", b: "0:0-b", want: -1},
		{name: "t-version 11", a: "0:0~-0", b: "0:0-0", want: -1},
		{name: "t-version 12", a: "0:0~a-0", b: "0:0-0", want: -1},
		{name: "t-version 13", a: "0:0-0", b: "0:0-0~", want: 1},
		{name: "t-version 14", a: "0:0-0~a", b: "0:0-0", want: -1},
		{name: "big epoch", a: "99:1", b: "100:1", want: -1},
		{name: "kernel", a: "6.1.0-18-amd64", b: "6.1.0-9-amd64", want: 1},
		{name: "plus dfsg", a: "4.18.0+dfsg-1+deb12u1", b: "4.18.0+dfsg-1", want: 1},
	})
}

// TestRPM takes most cases from rpm's tests/rpmvercmp.at.
func TestRPM(t *testing.T) {
	runCases(t, version.RPM, []cmpCase{
		{name: "1.0 = 1.0", a: "1.0", b: "1.0", want: 0},
		{name: "1.0 < 2.0", a: "1.0", b: "2.0", want: -1},
		{name: "2.0.1 > 2.0", a: "2.0.1", b: "2.0", want: 1},
		{name: "2.0.1a > 2.0.1", a: "2.0.1a", b: "2.0.1", want: 1},
		{name: "5.5p1 < 5.5p2", a: "5.5p1", b: "5.5p2", want: -1},
		{name: "5.5p10 > 5.5p1", a: "5.5p10", b: "5.5p1", want: 1},
		{name: "10xyz > 10.1xyz", a: "10xyz", b: "10.1xyz", want: -1},
		{name: "xyz10 < xyz10.1", a: "xyz10", b: "xyz10.1", want: -1},
		{name: "xyz.4 < 8", a: "xyz.4", b: "8", want: -1},
		{name: "xyz.4 < 2", a: "xyz.4", b: "2", want: -1},
		{name: "5.5p2 < 5.6p1", a: "5.5p2", b: "5.6p1", want: -1},
		{name: "5.6p1 < 6.5p1", a: "5.6p1", b: "6.5p1", want: -1},
		{name: "6.0.rc1 > 6.0", a: "6.0.rc1", b: "6.0", want: 1},
		{name: "10b2 > 10a1", a: "10b2", b: "10a1", want: 1},
		{name: "1.0aa < 1.0aaa", a: "1.0aa", b: "1.0aaa", want: -1},
		{name: "10.0001 = 10.1", a: "10.0001", b: "10.1", want: 0},
		{name: "10.0001 < 10.0039", a: "10.0001", b: "10.0039", want: -1},
		{name: "4.999.9 < 5.0", a: "4.999.9", b: "5.0", want: -1},
		{name: "20101121 > 20101122", a: "20101121", b: "20101122", want: -1},
		{name: "2_0 = 2_0", a: "2_0", b: "2_0", want: 0},
		{name: "2.0 = 2_0", a: "2.0", b: "2_0", want: 0},
		{name: "a = a", a: "a", b: "a", want: 0},
		{name: "a+ = a+", a: "a+", b: "a+", want: 0},
		{name: "a+ = a_", a: "a+", b: "a_", want: 0},
		{name: "1.0~rc1 < 1.0", a: "1.0~rc1", b: "1.0", want: -1},
		{name: "1.0~rc1 < 1.0~rc2", a: "1.0~rc1", b: "1.0~rc2", want: -1},
		{name: "1.0~rc1~git123 < 1.0~rc1", a: "1.0~rc1~git123", b: "1.0~rc1", want: -1},
		{name: "1.0^ > 1.0", a: "1.0^", b: "1.0", want: 1},
		{name: "1.0^git1 > 1.0", a: "1.0^git1", b: "1.0", want: 1},
		{name: "1.0^git1 < 1.01", a: "1.0^git1", b: "1.01", want: -1},
		{name: "1.0^20160101 < 1.0.1", a: "1.0^20160101", b: "1.0.1", want: -1},
		{name: "1.0^git1 < 1.0^git2", a: "1.0^git1", b: "1.0^git2", want: -1},
		{name: "1.0~rc1^git1 > 1.0~rc1", a: "1.0~rc1^git1", b: "1.0~rc1", want: 1},
		{name: "1.0^git1~pre < 1.0^git1", a: "1.0^git1~pre", b: "1.0^git1", want: -1},
		{name: "epoch wins", a: "1:1.0-1", b: "2.0-1", want: 1},
		{name: "release", a: "1.0-1.el9", b: "1.0-2.el9", want: -1},
		{name: "el9 minor release", a: "3.0.7-24.el9", b: "3.0.7-25.el9_3", want: -1},
		{name: "openssl el8", a: "1:1.1.1k-9.el8_7", b: "1:1.1.1k-12.el8_9", want: -1},
		{name: "kernel el9", a: "5.14.0-362.13.1.el9_3", b: "5.14.0-362.8.1.el9_3", want: 1},
	})
}

// TestAPK takes cases from apk-tools' test/version.data.
func TestAPK(t *testing.T) {
	runCases(t, version.APK, []cmpCase{
		{name: "equal", a: "1.0", b: "1.0", want: 0},
		{name: "revision", a: "1.0-r0", b: "1.0-r1", want: -1},
		{name: "revision numeric", a: "1.0-r9", b: "1.0-r10", want: -1},
		{name: "no revision before r0", a: "1.2", b: "1.2-r0", want: -1},
		{name: "minor", a: "1.2", b: "1.10", want: -1},
		{name: "letter", a: "1.2a", b: "1.2b", want: -1},
		{name: "letter after", a: "1.2", b: "1.2a", want: -1},
		{name: "alpha before release", a: "1.2_alpha1", b: "1.2", want: -1},
		{name: "alpha before beta", a: "1.0_alpha", b: "1.0_beta", want: -1},
		{name: "beta before pre", a: "1.0_beta2", b: "1.0_pre1", want: -1},
		{name: "pre before rc", a: "1.0_pre1", b: "1.0_rc1", want: -1},
		{name: "rc before release", a: "1.2_rc1", b: "1.2", want: -1},
		{name: "p after release", a: "1.0_p1", b: "1.0", want: 1},
		{name: "git after release", a: "1.0_git20240101", b: "1.0", want: 1},
		{name: "openssl alpine", a: "3.1.4-r1", b: "3.1.4-r5", want: -1},
		{name: "musl", a: "1.2.4_git20230717-r4", b: "1.2.4-r2", want: 1},
		{name: "busybox", a: "1.36.1-r15", b: "1.36.1-r5", want: 1},
		{name: "multiple digits", a: "2.39.3-r0", b: "2.4-r0", want: 1},
	})
}

func TestInvalidSortsLastAndIsReported(t *testing.T) {
	tests := []struct {
		name    string
		kind    version.Kind
		v       string
		invalid bool
	}{
		{name: "dpkg valid", kind: version.Dpkg, v: "1:2.3-4"},
		{name: "dpkg letter first", kind: version.Dpkg, v: "a1.0", invalid: true},
		{name: "dpkg bad epoch", kind: version.Dpkg, v: "x:1.0", invalid: true},
		{name: "dpkg empty", kind: version.Dpkg, v: "", invalid: true},
		{name: "apk valid", kind: version.APK, v: "1.2.3-r4"},
		{name: "apk garbage", kind: version.APK, v: "1.2.3-banana", invalid: true},
		{name: "rpm anything", kind: version.RPM, v: "whatever^1~2"},
		{name: "rpm empty", kind: version.RPM, v: "", invalid: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := version.Validate(tt.kind, tt.v)
			if tt.invalid != (err != nil) {
				t.Fatalf("Validate(%s, %q) = %v, want invalid %t", tt.kind, tt.v, err, tt.invalid)
			}
			if err != nil && !errors.Is(err, version.ErrInvalid) {
				t.Errorf("Validate error %v is not ErrInvalid", err)
			}
			if tt.invalid && tt.kind != version.RPM {
				if c := version.Compare(tt.kind, tt.v, "1.0"); c != 1 {
					t.Errorf("Compare(%q, 1.0) = %d, want invalid after valid", tt.v, c)
				}
			}
		})
	}
	if _, err := version.ParseKind("pacman"); !errors.Is(err, version.ErrUnknownKind) {
		t.Errorf("ParseKind(pacman) = %v", err)
	}
}

func FuzzCompare(f *testing.F) {
	seeds := [][2]string{
		{"1:1.0-1", "1.0~rc1"}, {"1.0^git1", "1.0~rc1"}, {"1.0_alpha1-r0", "1.0-r1"},
		{"", "0"}, {"::", "--"}, {"1.0-", "~"}, {"99999999999999999999", "1"},
	}
	for _, s := range seeds {
		for k := version.Dpkg; k <= version.APK; k++ {
			f.Add(uint8(k), s[0], s[1])
		}
	}
	f.Fuzz(func(t *testing.T, k uint8, a, b string) {
		kind := version.Kind(k % 4)
		ab, ba := version.Compare(kind, a, b), version.Compare(kind, b, a)
		if ab != -ba {
			t.Fatalf("%s: Compare(%q,%q)=%d but Compare(%q,%q)=%d", kind, a, b, ab, b, a, ba)
		}
		if version.Compare(kind, a, a) != 0 {
			t.Fatalf("%s: Compare(%q,%q) != 0", kind, a, a)
		}
		_ = version.Validate(kind, a)
	})
}
