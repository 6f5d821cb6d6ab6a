// Package matchpattern implements the matchPattern language of DNS rules and
// toFQDNs selectors (the CiliumNetworkPolicy semantics):
//
//   - matching is case-insensitive and a trailing dot is optional, on both
//     the pattern and the name;
//   - '*' matches zero or more DNS name characters ([-a-z0-9_]) within one
//     label, so "*.cilium.io" matches "sub.cilium.io" but neither
//     "cilium.io" nor "a.b.cilium.io";
//   - the pattern "*" alone (or any pattern made only of stars) matches
//     every name;
//   - a leading "**." matches one or more labels of any depth (current
//     Cilium), so "**.cilium.io" matches "a.cilium.io" and "a.b.cilium.io"
//     but not "cilium.io".
//
// The package is pure: a compiled Matcher is immutable and safe for
// concurrent use. It matches label by label without regular expressions.
package matchpattern

import (
	"errors"
	"fmt"
	"strings"
)

// MaxLen is the longest pattern accepted, the longest presentation-format
// DNS name (RFC 1035 §2.3.4: 255 octets on the wire).
const MaxLen = 255

// Matcher is a compiled pattern.
type Matcher struct {
	pattern  string     // normalised: lower case, no trailing dot
	all      bool       // the pattern "*"
	anyDepth bool       // the pattern began with "**."
	labels   [][]string // per label (left to right), the literal pieces between '*'
}

// Validate reports whether pattern is a valid matchPattern.
func Validate(pattern string) error {
	_, err := Compile(pattern)
	return err
}

// Compile validates pattern and compiles it into a Matcher.
func Compile(pattern string) (*Matcher, error) {
	p := normalise(strings.TrimSpace(pattern))
	if p == "" {
		return nil, errors.New("empty pattern")
	}
	if len(p) > MaxLen {
		return nil, fmt.Errorf("pattern is %d characters long, more than %d", len(p), MaxLen)
	}
	if strings.Trim(p, "*") == "" {
		// "*", "**", "*.": a pattern made only of stars matches every name.
		return &Matcher{pattern: "*", all: true}, nil
	}
	m := &Matcher{pattern: p}
	rest := p
	if stars := len(p) - len(strings.TrimLeft(p, "*")); stars >= 2 && strings.HasPrefix(p[stars:], ".") {
		// "**." (or more stars then a dot, as Cilium accepts).
		m.anyDepth = true
		rest = p[stars+1:]
		if rest == "" {
			return nil, fmt.Errorf("pattern %q: a leading \"**.\" must be followed by a name", pattern)
		}
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if !nameChar(c) && c != '.' && c != '*' {
			return nil, fmt.Errorf("pattern %q: character %q not allowed: only letters, digits, '-', '_', '.' and '*' are", pattern, c)
		}
	}
	if strings.Contains(rest, "**") {
		return nil, fmt.Errorf("pattern %q: \"**\" is only allowed as a leading \"**.\"", pattern)
	}
	for _, l := range strings.Split(rest, ".") {
		if l == "" {
			return nil, fmt.Errorf("pattern %q: empty label", pattern)
		}
		if len(l) > 63 {
			return nil, fmt.Errorf("pattern %q: label %q longer than 63 characters", pattern, l)
		}
		m.labels = append(m.labels, strings.Split(l, "*"))
	}
	return m, nil
}

// String returns the normalised pattern (lower case, no trailing dot).
func (m *Matcher) String() string { return m.pattern }

// Match reports whether name matches the pattern. name is compared
// case-insensitively, with or without its trailing dot.
func (m *Matcher) Match(name string) bool {
	if m.all {
		return true
	}
	name = normalise(name)
	if name == "" {
		return false
	}
	// Walk the labels right to left without splitting (no allocation).
	rest := name
	for i := len(m.labels) - 1; i >= 0; i-- {
		if rest == "" {
			return false
		}
		var label string
		if j := strings.LastIndexByte(rest, '.'); j >= 0 {
			label, rest = rest[j+1:], rest[:j]
			if rest == "" {
				return false // a leading dot: empty first label
			}
		} else {
			label, rest = rest, ""
		}
		if !matchLabel(m.labels[i], label) {
			return false
		}
	}
	if !m.anyDepth {
		return rest == ""
	}
	if rest == "" {
		return false
	}
	for rest != "" {
		label := rest
		if j := strings.IndexByte(rest, '.'); j >= 0 {
			label, rest = rest[:j], rest[j+1:]
			if rest == "" {
				return false
			}
		} else {
			rest = ""
		}
		if !validLabel(label) {
			return false
		}
	}
	return true
}

// matchLabel matches one name label against the literal pieces of one
// pattern label (pieces separated by '*'). A label holding a character
// outside the DNS name set never matches: every literal piece is made of
// name characters, and '*' only stands for name characters.
func matchLabel(pieces []string, label string) bool {
	if !validLabel(label) {
		return false
	}
	if len(pieces) == 1 {
		return label == pieces[0]
	}
	first, last := pieces[0], pieces[len(pieces)-1]
	if len(label) < len(first)+len(last) || !strings.HasPrefix(label, first) || !strings.HasSuffix(label, last) {
		return false
	}
	mid := label[len(first) : len(label)-len(last)]
	// Leftmost placement of each middle piece is optimal for '*'-only globs.
	for _, p := range pieces[1 : len(pieces)-1] {
		j := strings.Index(mid, p)
		if j < 0 {
			return false
		}
		mid = mid[j+len(p):]
	}
	return true
}

// validLabel reports whether label is non-empty and made of name characters.
func validLabel(label string) bool {
	if label == "" {
		return false
	}
	for i := 0; i < len(label); i++ {
		if !nameChar(label[i]) {
			return false
		}
	}
	return true
}

// nameChar reports whether c (already lower case) may appear in a label.
func nameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// normalise lower-cases s (ASCII only, as DNS does: RFC 4343) and strips
// one trailing dot.
func normalise(s string) string {
	s = strings.TrimSuffix(s, ".")
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return asciiLower(s)
		}
	}
	return s
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}
