package policy

import (
	"strings"

	"github.com/wardproxy/ward/policy/matchpattern"
)

// String returns the selector's canonical text, "matchName:NAME" or
// "matchPattern:PATTERN" (lower case, no trailing dot), the same string as
// filters/dns.SelectorLabel. It is the key of the fqdn: label that marks
// IPs learnt for matching names.
func (s FQDNSelector) String() string {
	if s.MatchName != "" {
		return "matchName:" + normalizeName(s.MatchName)
	}
	return "matchPattern:" + normalizeName(s.MatchPattern)
}

// Label returns the fqdn:<selector> label.
func (s FQDNSelector) Label() Label { return Label{Source: SourceFQDN, Key: s.String()} }

func normalizeName(n string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".")
}

// FQDNMatcher is a compiled FQDNSelector. Immutable and safe for concurrent
// use.
type FQDNMatcher struct {
	Selector FQDNSelector
	name     string
	pattern  *matchpattern.Matcher
}

// Compile compiles s.
func (s FQDNSelector) Compile() (*FQDNMatcher, error) {
	m := &FQDNMatcher{Selector: s}
	if s.MatchName != "" {
		m.name = normalizeName(s.MatchName)
		return m, nil
	}
	p, err := matchpattern.Compile(s.MatchPattern)
	if err != nil {
		return nil, err
	}
	m.pattern = p
	return m, nil
}

// Match reports whether the DNS name (any case, trailing dot optional)
// is selected.
func (m *FQDNMatcher) Match(name string) bool {
	if m.pattern != nil {
		return m.pattern.Match(name)
	}
	return normalizeName(name) == m.name
}

// Label returns the fqdn:<selector> label.
func (m *FQDNMatcher) Label() Label { return m.Selector.Label() }

// Matches compiles s and matches name; prefer Compile for repeated use.
func (s FQDNSelector) Matches(name string) bool {
	m, err := s.Compile()
	return err == nil && m.Match(name)
}

// FQDNSelectorLabels returns the labels of the node-local identity of an
// IP selected by the given selectors, given as their String() form (what
// the DNS proxy's identity allocator receives): reserved:world plus
// fqdn:<selector> for each.
func FQDNSelectorLabels(selectors []string) Labels {
	out := []Label{{Source: SourceReserved, Key: "world"}}
	for _, s := range selectors {
		out = append(out, Label{Source: SourceFQDN, Key: s})
	}
	return NewLabels(out...)
}

// FQDNLabels returns the labels of the node-local identity of an IP the
// DNS proxy learnt for name: reserved:world plus fqdn:<selector> for every
// matcher that matches name. ok is false when none matches (the IP then
// keeps the world identity).
func FQDNLabels(name string, ms []*FQDNMatcher) (ls Labels, ok bool) {
	out := []Label{{Source: SourceReserved, Key: "world"}}
	for _, m := range ms {
		if m.Match(name) {
			out = append(out, m.Label())
			ok = true
		}
	}
	return NewLabels(out...), ok
}
