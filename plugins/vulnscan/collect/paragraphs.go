package collect

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
)

// maxLine bounds one line of a package database; dpkg's Description and
// Conffiles lines are far shorter in practice.
const maxLine = 1 << 20

// paragraphs reads r as paragraphs of lines separated by blank lines, the
// shape of dpkg's status and apk's installed databases: field is called
// with each non-blank line and its number, end after each paragraph (at
// a blank line and at the end of r) with the number of the line that
// ended it. A line is at most maxLine bytes. It returns the number of
// lines read and the reader's error.
func paragraphs(r io.Reader, field func(line int, b []byte), end func(line int)) (int, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(bytes.TrimSpace(b)) == 0 {
			end(line)
			continue
		}
		field(line, b)
	}
	end(line)
	return line, sc.Err()
}

// skips lists why paragraphs were skipped, up to maxReasons, and counts
// the rest.
type skips struct {
	what, unit string // "dpkg status", "stanza"
	list       []string
	n          int
}

func (s *skips) add(line int, why string) {
	s.n++
	if s.n <= maxReasons {
		s.list = append(s.list, fmt.Sprintf("%s: %s ending at line %d skipped: %s", s.what, s.unit, line, why))
	}
}

func (s *skips) reasons() []string {
	if s.n > maxReasons {
		return append(s.list, fmt.Sprintf("%s: %d more %ss skipped", s.what, s.n-maxReasons, s.unit))
	}
	return s.list
}

// maxReasons bounds the reasons listed for a partial result; the rest are
// counted.
const maxReasons = 10
