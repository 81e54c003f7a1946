// Package jsondiff compares two JSON documents and lists the differences by
// path, for `vigilctl config diff`.
package jsondiff

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// Op is the kind of a change.
type Op string

// Change kinds.
const (
	Added   Op = "added"
	Removed Op = "removed"
	Changed Op = "changed"
)

// Change is one difference at Path (dotted keys, [i] for list items).
type Change struct {
	Path string `json:"path"`
	Op   Op     `json:"op"`
	Old  any    `json:"old,omitempty"`
	New  any    `json:"new,omitempty"`
}

// Diff returns the changes that turn a into b, in path order. a and b are
// anything encoding/json marshals.
func Diff(a, b any) ([]Change, error) {
	av, err := generic(a)
	if err != nil {
		return nil, err
	}
	bv, err := generic(b)
	if err != nil {
		return nil, err
	}
	var out []Change
	walk("", av, bv, &out)
	return out, nil
}

func generic(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("jsondiff: %w", err)
	}
	var g any
	if err := json.Unmarshal(b, &g); err != nil {
		return nil, fmt.Errorf("jsondiff: %w", err)
	}
	return g, nil
}

func walk(path string, a, b any, out *[]Change) {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		keys := make([]string, 0, len(am)+len(bm))
		for k := range am {
			keys = append(keys, k)
		}
		for k := range bm {
			if _, ok := am[k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			av, ain := am[k]
			bv, bin := bm[k]
			switch {
			case !ain:
				*out = append(*out, Change{Path: p, Op: Added, New: bv})
			case !bin:
				*out = append(*out, Change{Path: p, Op: Removed, Old: av})
			default:
				walk(p, av, bv, out)
			}
		}
		return
	}
	al, aok := a.([]any)
	bl, bok := b.([]any)
	if aok && bok && len(al) == len(bl) {
		for i := range al {
			walk(fmt.Sprintf("%s[%d]", path, i), al[i], bl[i], out)
		}
		return
	}
	if !reflect.DeepEqual(a, b) {
		*out = append(*out, Change{Path: path, Op: Changed, Old: a, New: b})
	}
}

// Format writes changes one per line: "+ path: new", "- path: old",
// "~ path: old -> new".
func Format(changes []Change) string {
	if len(changes) == 0 {
		return "no differences\n"
	}
	var sb strings.Builder
	for _, c := range changes {
		switch c.Op {
		case Added:
			fmt.Fprintf(&sb, "+ %s: %s\n", c.Path, compact(c.New))
		case Removed:
			fmt.Fprintf(&sb, "- %s: %s\n", c.Path, compact(c.Old))
		default:
			fmt.Fprintf(&sb, "~ %s: %s -> %s\n", c.Path, compact(c.Old), compact(c.New))
		}
	}
	return sb.String()
}

func compact(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
