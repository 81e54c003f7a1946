package jsondiff

import (
	"encoding/json"
	"testing"
)

func TestDiff(t *testing.T) {
	tests := []struct {
		name string
		a, b string
		want string
	}{
		{name: "equal", a: `{"x":1}`, b: `{"x":1}`, want: "no differences\n"},
		{name: "changed nested", a: `{"p":{"q":{"n":1}}}`, b: `{"p":{"q":{"n":2}}}`, want: "~ p.q.n: 1 -> 2\n"},
		{name: "added and removed", a: `{"a":1,"b":true}`, b: `{"b":true,"c":"x"}`, want: "- a: 1\n+ c: \"x\"\n"},
		{name: "list item", a: `{"l":[1,2]}`, b: `{"l":[1,3]}`, want: "~ l[1]: 2 -> 3\n"},
		{name: "list length", a: `{"l":[1]}`, b: `{"l":[1,2]}`, want: "~ l: [1] -> [1,2]\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch, err := Diff(json.RawMessage(tt.a), json.RawMessage(tt.b))
			if err != nil {
				t.Fatal(err)
			}
			if got := Format(ch); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}
