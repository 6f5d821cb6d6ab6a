package http

import (
	"math"
	"regexp/syntax"
	"slices"
)

// The fields the automata cover.
const (
	fPath = iota
	fMethod
	fHost
	nFields
)

func (r *rule) field(k int) *field {
	switch k {
	case fPath:
		return &r.path
	case fMethod:
		return &r.method
	}
	return &r.host
}

// automaton selects, for one field, the rules a request value can match.
// Every rule that compiled is in exactly one of: the dfa (covered), any
// (the rule does not constrain the field) or other (its expression needs
// what the dfa does not do; matched by its regex).
type automaton struct {
	dfa   *pathDFA
	rev   *pathDFA // path only: expressions run backwards (see leadingStar)
	any   []int32
	other []int32
}

func (m *Matcher) buildAutomata() {
	for k := range nFields {
		a := &m.autos[k]
		var trees, revTrees []*syntax.Regexp
		var ids, revIDs []int32
		for i := range m.rules {
			r := &m.rules[i]
			f := r.field(k)
			switch {
			case r.broken:
			case !f.set:
				a.any = append(a.any, int32(i))
			case !dfaCompatible(f.tree):
				a.other = append(a.other, int32(i))
			case k == fPath && leadingStar(f.tree) && !leadingStar(reverseTree(f.tree)):
				// .*/service7/items/[0-9]+ keeps a thread alive in every
				// state of a forward automaton; read backwards it is as
				// selective as a literal prefix.
				revTrees = append(revTrees, reverseTree(f.tree))
				revIDs = append(revIDs, int32(i))
			default:
				trees = append(trees, f.tree)
				ids = append(ids, int32(i))
			}
		}
		var other []int32
		a.dfa, ids, other = buildCovering(trees, ids)
		a.other = mergeSorted(a.other, other)
		a.rev, revIDs, other = buildCovering(revTrees, revIDs)
		a.other = mergeSorted(a.other, other)
		for _, ri := range append(ids, revIDs...) {
			m.rules[ri].covered[k] = true
		}
	}
}

// buildCovering builds one automaton for trees, leaving out the
// expressions that are too big alone (.*a.{30} needs 2^30 states) when
// the whole set is too big. It returns the automaton (nil if none), the
// rules it covers and the rules left to their regexes.
func buildCovering(trees []*syntax.Regexp, ids []int32) (*pathDFA, []int32, []int32) {
	if len(ids) == 0 {
		return nil, nil, nil
	}
	if d := buildDFA(trees, ids); d != nil {
		return d, ids, nil
	}
	var hostile []int32
	keptTrees, keptIDs := trees[:0:0], ids[:0:0]
	for i, t := range trees {
		if buildDFALimit(trees[i:i+1], ids[i:i+1], maxDFAStates/8, maxDFATrans/8, maxDFAWork/16) == nil {
			hostile = append(hostile, ids[i])
			continue
		}
		keptTrees, keptIDs = append(keptTrees, t), append(keptIDs, ids[i])
	}
	if len(hostile) > 0 && len(keptIDs) > 0 {
		if d := buildDFA(keptTrees, keptIDs); d != nil {
			return d, keptIDs, hostile
		}
	}
	return nil, nil, ids
}

// leadingStar reports whether re starts with an unbounded run of any
// character (.* or .+), after a leading ^.
func leadingStar(re *syntax.Regexp) bool {
	for {
		switch re.Op {
		case syntax.OpCapture:
			re = re.Sub[0]
			continue
		case syntax.OpConcat:
			subs := re.Sub
			for len(subs) > 0 && subs[0].Op == syntax.OpBeginText {
				subs = subs[1:]
			}
			if len(subs) == 0 {
				return false
			}
			re = subs[0]
			continue
		case syntax.OpStar, syntax.OpPlus:
			switch re.Sub[0].Op {
			case syntax.OpAnyChar, syntax.OpAnyCharNotNL:
				return true
			}
		}
		return false
	}
}

// reverseTree returns an expression matching the reversed strings of re:
// concatenations and literals reversed, ^ and $ swapped.
func reverseTree(re *syntax.Regexp) *syntax.Regexp {
	c := &syntax.Regexp{Op: re.Op, Flags: re.Flags, Min: re.Min, Max: re.Max, Cap: re.Cap, Name: re.Name}
	c.Rune = append([]rune(nil), re.Rune...)
	switch re.Op {
	case syntax.OpLiteral:
		slices.Reverse(c.Rune)
	case syntax.OpBeginText:
		c.Op = syntax.OpEndText
	case syntax.OpEndText:
		c.Op = syntax.OpBeginText
	case syntax.OpBeginLine:
		c.Op = syntax.OpEndLine
	case syntax.OpEndLine:
		c.Op = syntax.OpBeginLine
	}
	for _, sub := range re.Sub {
		c.Sub = append(c.Sub, reverseTree(sub))
	}
	if re.Op == syntax.OpConcat {
		slices.Reverse(c.Sub)
	}
	return c
}

func mergeSorted(a, b []int32) []int32 {
	out := append(slices.Clone(a), b...)
	slices.Sort(out)
	return out
}

// selection holds, per field, the rules its automata accepted for the
// request: slot 0 the forward automaton; slot 1 the backward one for the
// path, the authority without its port for the host.
type selection struct {
	acc [nFields][2][]int32
}

// selectRules runs the request's values through the automata. It returns
// false when a value has bytes the automata do not handle (non-ASCII);
// the caller then matches otherwise.
func (m *Matcher) selectRules(req *Request, sel *selection) bool {
	for k := range nFields {
		a := &m.autos[k]
		if a.dfa == nil && a.rev == nil {
			continue
		}
		var v string
		switch k {
		case fPath:
			v = req.Path
		case fMethod:
			v = req.Method
		case fHost:
			v = req.Host
		}
		if v == "" {
			continue // absent: no expression matches
		}
		if a.rev != nil {
			st, ok := a.rev.runBackwards(v)
			if !ok {
				return false
			}
			sel.acc[k][1] = a.rev.accept[st]
		}
		if a.dfa == nil {
			continue
		}
		st, ok := a.dfa.run(v)
		if !ok {
			return false
		}
		sel.acc[k][0] = a.dfa.accept[st]
		if k == fHost {
			if h, ok := stripPort(v); ok {
				st, ok := a.dfa.run(h)
				if !ok {
					return false
				}
				sel.acc[k][1] = a.dfa.accept[st]
			}
		}
	}
	return true
}

// scan visits, in ascending order, the rules the most selective field
// allows, and checks each fully. With res nil it returns the first rule
// that matches (-1 none); otherwise it runs the actions of every matching
// rule into res.
func (m *Matcher) scan(req *Request, sel *selection, res *Result) int {
	driver, size := 0, math.MaxInt
	for k := range nFields {
		a := &m.autos[k]
		n := len(sel.acc[k][0]) + len(sel.acc[k][1]) + len(a.any) + len(a.other)
		if n < size {
			driver, size = k, n
		}
	}
	a := &m.autos[driver]
	lists := [4][]int32{sel.acc[driver][0], sel.acc[driver][1], a.any, a.other}
	for {
		next := int32(math.MaxInt32)
		for _, l := range lists {
			if len(l) > 0 && l[0] < next {
				next = l[0]
			}
		}
		if next == math.MaxInt32 {
			return -1
		}
		for i, l := range lists {
			if len(l) > 0 && l[0] == next {
				lists[i] = l[1:]
			}
		}
		r := &m.rules[next]
		if !m.selected(r, req, sel) {
			continue
		}
		if res == nil {
			return int(next)
		}
		r.collect(req, res)
	}
}

// selected reports whether every condition of r but its actions holds,
// using the automata's verdicts for the fields they cover.
func (m *Matcher) selected(r *rule, req *Request, sel *selection) bool {
	if r.broken {
		return false
	}
	for k := range nFields {
		f := r.field(k)
		if !f.set {
			continue
		}
		if r.covered[k] {
			if !contains(sel.acc[k][0], r.idx) && !contains(sel.acc[k][1], r.idx) {
				return false
			}
			continue
		}
		var ok bool
		switch k {
		case fPath:
			ok = f.match(req.Path)
		case fMethod:
			ok = f.match(req.Method)
		case fHost:
			ok = r.matchHost(req.Host)
		}
		if !ok {
			return false
		}
	}
	for i := range r.headers {
		if !r.headers[i].match(req.Headers) {
			return false
		}
	}
	return true
}

func contains(list []int32, ri int) bool {
	_, ok := slices.BinarySearch(list, int32(ri))
	return ok
}
