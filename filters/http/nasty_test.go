package http

import (
	"fmt"
	"testing"

	"github.com/wardproxy/ward/policy"
)

// TestAutomatonLeavesOutHostileRegex: an expression whose automaton is
// exponential both ways is matched by its regex; the other rules keep
// theirs.
func TestAutomatonLeavesOutHostileRegex(t *testing.T) {
	rules := []policy.PortRuleHTTP{{Path: ".*a.{30}b.*"}}
	for i := range 50 {
		rules = append(rules, policy.PortRuleHTTP{Path: fmt.Sprintf("/svc%d/.*", i)})
	}
	m := mustCompile(t, rules, nil)
	a := m.autos[fPath]
	if a.dfa == nil || len(a.other) != 1 || a.other[0] != 0 || m.rules[0].covered[fPath] || !m.rules[1].covered[fPath] {
		t.Fatalf("path automaton %v, other %v; want an automaton for every rule but rule 0", a.dfa != nil, a.other)
	}
	for _, tc := range []struct {
		path string
		rule int
	}{{"/svc7/x", 8}, {"/" + fmt.Sprintf("%031d", 0) + "a" + fmt.Sprintf("%030d", 0) + "b", 0}, {"/nothing", -1}} {
		if got := m.Match(&Request{Path: tc.path}); got.Rule != tc.rule {
			t.Errorf("Match(%q).Rule = %d; want %d", tc.path, got.Rule, tc.rule)
		}
	}
}

func TestBackwardAutomaton(t *testing.T) {
	rules := []policy.PortRuleHTTP{{Path: ".*a.{30}"}, {Path: "/x/.*"}, {Path: ".*/items/[0-9]+"}, {Path: "^.*[.]json$"}}
	m := mustCompile(t, rules, nil)
	a := m.autos[fPath]
	if a.rev == nil || a.dfa == nil || len(a.other) != 0 {
		t.Fatalf("forward %v backward %v other %v; want both automata and no regex", a.dfa != nil, a.rev != nil, a.other)
	}
	for _, tc := range []struct {
		path string
		rule int
	}{
		{"/" + fmt.Sprintf("%031d", 0) + "a" + fmt.Sprintf("%030d", 0), 0},
		{"/x/items/12", 1},
		{"/y/items/12", 2},
		{"/y/items/12/", -1},
		{"/a/b.json", 3},
		{"/a/b.jsonx", -1},
	} {
		if got := m.Match(&Request{Path: tc.path}); got.Rule != tc.rule {
			t.Errorf("Match(%q).Rule = %d; want %d", tc.path, got.Rule, tc.rule)
		}
	}
}
