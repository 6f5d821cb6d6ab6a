package dns

import (
	"slices"
	"testing"

	"github.com/wardproxy/ward/policy"
)

func TestSelectorSetMatching(t *testing.T) {
	sels := []policy.PortRuleDNS{
		{MatchName: "api.github.test"},
		{MatchPattern: "*.github.test"},
		{MatchPattern: "**.test"},
		{MatchPattern: "api.*"},
		{MatchName: "x.test", MatchPattern: "*.other.test"},
	}
	cs, err := compileSelectors(sels)
	if err != nil {
		t.Fatal(err)
	}
	set := newSelectorSet(cs)
	tests := []struct {
		name string
		want []string
	}{
		{name: "api.github.test", want: []string{"matchName:api.github.test", "matchPattern:**.test", "matchPattern:*.github.test"}},
		{name: "api.example", want: []string{"matchPattern:api.*"}},
		{name: "x.test", want: []string{"matchName:x.test,matchPattern:*.other.test", "matchPattern:**.test"}},
		{name: "a.other.test", want: []string{"matchName:x.test,matchPattern:*.other.test", "matchPattern:**.test"}},
		{name: "github.test", want: []string{"matchPattern:**.test"}},
		{name: "example.org", want: nil},
	}
	for _, tt := range tests {
		got := set.matching(tt.name, nil)
		slices.Sort(got)
		if !slices.Equal(got, tt.want) {
			t.Errorf("matching(%q) = %q; want %q", tt.name, got, tt.want)
		}
		// The index agrees with trying every selector.
		var brute []string
		for _, s := range cs {
			if s.match(tt.name) {
				brute = append(brute, s.label)
			}
		}
		slices.Sort(brute)
		if !slices.Equal(got, brute) {
			t.Errorf("matching(%q) = %q; every selector says %q", tt.name, got, brute)
		}
	}
}
