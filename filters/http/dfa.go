package http

import (
	"encoding/binary"
	"regexp/syntax"
	"slices"
)

// Limits of the combined path automaton. Past them Compile keeps the
// radix index and per-rule regexes (correct, slower).
const (
	maxDFAStates = 20000
	maxDFATrans  = 2 << 20  // transition entries (4 bytes each)
	maxDFAWork   = 16 << 20 // threads visited while building: bounds Compile time
)

// pathDFA is one deterministic automaton for one field's expressions (path,
// method or host) of all rules: running a request's value through it once
// yields every rule whose expression matches it (full match), whatever the
// number of rules. It is built
// eagerly at Compile time from the rules' RE2 programs (subset
// construction over ASCII character classes) and is immutable afterwards.
// Paths with non-ASCII bytes, and rules whose expressions use assertions
// other than ^ and $ (\b, (?m)), are left to the regexes.
type pathDFA struct {
	class  [128]uint8 // character class of each ASCII byte
	nclass int
	trans  []int32   // state*nclass + class → state; state 0 is dead
	accept [][]int32 // per state: rules whose path matches when input ends there, ascending
	start  int32
}

// dinst is an instruction of the combined program.
type dinst struct {
	in   *syntax.Inst
	out  uint32 // Out, relocated
	arg  uint32 // Arg for Alt/AltMatch, relocated
	rule int32
}

// buildDFA builds the automaton accepting, for each i, the language of
// trees[i] (which must be DFA-compatible) with rule ids[i]. It returns nil
// when the automaton would be too big.
func buildDFA(trees []*syntax.Regexp, ids []int32) *pathDFA {
	return buildDFALimit(trees, ids, maxDFAStates, maxDFATrans, maxDFAWork)
}

func buildDFALimit(trees []*syntax.Regexp, ids []int32, maxStates, maxTrans, maxWork int) *pathDFA {
	var prog []dinst
	var starts []uint32
	for i, ri := range ids {
		p, err := syntax.Compile(trees[i])
		if err != nil {
			return nil
		}
		base := uint32(len(prog))
		for i := range p.Inst {
			in := &p.Inst[i]
			d := dinst{in: in, out: in.Out + base, rule: ri}
			if in.Op == syntax.InstAlt || in.Op == syntax.InstAltMatch {
				d.arg = in.Arg + base
			}
			prog = append(prog, d)
		}
		starts = append(starts, uint32(p.Start)+base)
	}
	b := dfaBuilder{prog: prog, mark: make([]uint32, len(prog)), ids: map[string]int32{}}
	d := &pathDFA{}
	// Character classes: ASCII bytes matched by the same instructions,
	// by refining one class with each distinct set of bytes an
	// instruction matches.
	b.masks = make([]asciiSet, len(prog))
	distinct := map[asciiSet]bool{}
	for pc := range prog {
		switch prog[pc].in.Op {
		case syntax.InstRune, syntax.InstRune1, syntax.InstRuneAny, syntax.InstRuneAnyNotNL:
			m := matchSet(prog[pc].in)
			b.masks[pc] = m
			distinct[m] = true
		}
	}
	var cls [128]int
	n := 1
	for m := range distinct {
		split := map[[2]int]int{}
		next := 0
		for r := range 128 {
			k := [2]int{cls[r], int(m.bit(r))}
			c, ok := split[k]
			if !ok {
				c = next
				split[k] = c
				next++
			}
			cls[r] = c
		}
		n = next
	}
	reps := make([]rune, n)
	seen := make([]bool, n)
	for r := range 128 {
		c := cls[r]
		d.class[r] = uint8(c)
		if !seen[c] {
			seen[c], reps[c] = true, rune(r)
		}
	}
	d.nclass = len(reps)
	b.nclass = d.nclass

	// State 0 is dead: no threads, transitions to itself.
	b.add(nil, d)
	b.gen++
	var set []uint32
	for _, s := range starts {
		set = b.closure(set, s, true)
	}
	d.start = b.add(set, d)
	for q := 1; q < len(b.sets); q++ {
		if len(b.sets) > maxStates || len(d.trans) > maxTrans || b.work > maxWork {
			return nil
		}
		for c, r := range reps {
			b.gen++
			var next []uint32
			b.work += len(b.sets[q])
			for _, pc := range b.sets[q] {
				in := prog[pc].in
				switch in.Op {
				case syntax.InstRune, syntax.InstRune1, syntax.InstRuneAny, syntax.InstRuneAnyNotNL:
					if b.masks[pc].bit(int(r)) != 0 {
						next = b.closure(next, prog[pc].out, false)
					}
				}
			}
			d.trans[q*d.nclass+c] = b.add(next, d)
		}
	}
	if len(b.sets) > maxStates || len(d.trans) > maxTrans || b.work > maxWork {
		return nil
	}
	return d
}

type dfaBuilder struct {
	prog   []dinst
	mark   []uint32
	gen    uint32
	ids    map[string]int32
	sets   [][]uint32
	nclass int
	stack  []uint32
	key    []byte
	work   int
	masks  []asciiSet // per rune instruction: the ASCII bytes it matches
}

// asciiSet is a set of ASCII bytes.
type asciiSet [2]uint64

func (s asciiSet) bit(r int) uint64 { return s[r>>6] >> (r & 63) & 1 }

// matchSet returns the ASCII bytes the rune instruction in matches.
func matchSet(in *syntax.Inst) asciiSet {
	var s asciiSet
	for r := range 128 {
		if in.MatchRune(rune(r)) {
			s[r>>6] |= 1 << (r & 63)
		}
	}
	return s
}

// closure adds to set the threads reachable from pc without consuming
// input: rune instructions, matches, and pending $ assertions are kept.
func (b *dfaBuilder) closure(set []uint32, pc uint32, atStart bool) []uint32 {
	b.stack = append(b.stack[:0], pc)
	for len(b.stack) > 0 {
		pc := b.stack[len(b.stack)-1]
		b.stack = b.stack[:len(b.stack)-1]
		b.work++
		if b.mark[pc] == b.gen {
			continue
		}
		b.mark[pc] = b.gen
		d := &b.prog[pc]
		switch d.in.Op {
		case syntax.InstAlt, syntax.InstAltMatch:
			b.stack = append(b.stack, d.arg, d.out)
		case syntax.InstNop, syntax.InstCapture:
			b.stack = append(b.stack, d.out)
		case syntax.InstEmptyWidth:
			if syntax.EmptyOp(d.in.Arg) == syntax.EmptyBeginText {
				if atStart {
					b.stack = append(b.stack, d.out)
				}
				continue
			}
			set = append(set, pc) // $: pending until the input ends
		case syntax.InstMatch, syntax.InstRune, syntax.InstRune1, syntax.InstRuneAny, syntax.InstRuneAnyNotNL:
			set = append(set, pc)
		}
	}
	return set
}

// add returns the state for set, creating it (with its accept list and
// room for its transitions) when new.
func (b *dfaBuilder) add(set []uint32, d *pathDFA) int32 {
	slices.Sort(set)
	set = slices.Compact(set)
	b.work += len(set)
	b.key = b.key[:0]
	for _, pc := range set {
		b.key = binary.LittleEndian.AppendUint32(b.key, pc)
	}
	if id, ok := b.ids[string(b.key)]; ok {
		return id
	}
	id := int32(len(b.sets))
	b.ids[string(b.key)] = id
	b.sets = append(b.sets, set)
	d.trans = append(d.trans, make([]int32, b.nclass)...)
	d.accept = append(d.accept, b.accepting(set))
	return id
}

// accepting lists the rules that match when the input ends in set.
func (b *dfaBuilder) accepting(set []uint32) []int32 {
	var out []int32
	seen := map[uint32]bool{}
	stack := slices.Clone(set)
	for len(stack) > 0 {
		pc := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[pc] {
			continue
		}
		seen[pc] = true
		d := &b.prog[pc]
		switch d.in.Op {
		case syntax.InstMatch:
			out = append(out, d.rule)
		case syntax.InstAlt, syntax.InstAltMatch:
			stack = append(stack, d.arg, d.out)
		case syntax.InstNop, syntax.InstCapture:
			stack = append(stack, d.out)
		case syntax.InstEmptyWidth:
			if syntax.EmptyOp(d.in.Arg) == syntax.EmptyEndText {
				stack = append(stack, d.out)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// run returns the state reached on path, and false when path has a byte
// the automaton does not handle (non-ASCII).
func (d *pathDFA) run(path string) (int32, bool) {
	s := d.start
	for i := 0; i < len(path); i++ {
		c := path[i]
		if c >= 0x80 {
			return 0, false
		}
		s = d.trans[int(s)*d.nclass+int(d.class[c])]
		if s == 0 {
			return 0, true
		}
	}
	return s, true
}

// runBackwards is run over path read from its end.
func (d *pathDFA) runBackwards(path string) (int32, bool) {
	s := d.start
	for i := len(path) - 1; i >= 0; i-- {
		c := path[i]
		if c >= 0x80 {
			return 0, false
		}
		s = d.trans[int(s)*d.nclass+int(d.class[c])]
		if s == 0 {
			return 0, true
		}
	}
	return s, true
}

// dfaCompatible reports whether tree uses only what the automaton
// implements: assertions limited to ^ and $ (text, not line).
func dfaCompatible(tree *syntax.Regexp) bool {
	switch tree.Op {
	case syntax.OpBeginLine, syntax.OpEndLine, syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return false
	}
	for _, s := range tree.Sub {
		if !dfaCompatible(s) {
			return false
		}
	}
	return true
}
