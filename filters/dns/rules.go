package dns

import (
	"errors"
	"fmt"
	"strings"

	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/policy/matchpattern"
)

// Matcher is a compiled list of DNS rules (toPorts[].rules.dns) of one
// endpoint and port: a query is allowed when its name matches any rule.
// A Matcher is immutable and safe for concurrent use.
type Matcher struct {
	all   bool
	names map[string]struct{} // matchName values, lower case, no trailing dot
	// bySuffix indexes patterns by their literal suffix: the whole labels
	// at their right end that hold no '*' ("*.svc.example.test" →
	// "svc.example.test"). A name can only match a pattern whose literal
	// suffix is one of the name's own label suffixes, so Allow looks up
	// a handful of keys instead of trying every pattern.
	bySuffix map[string][]*matchpattern.Matcher
	other    []*matchpattern.Matcher // patterns with no literal suffix
}

// AllowAll is a Matcher allowing every name (no rules, or the rule
// matchPattern "*").
var AllowAll = &Matcher{all: true}

// Compile compiles rules. A rule matches when its MatchName equals the query
// name or its MatchPattern matches it (either, when both are set); a rule
// with neither is an error. An empty list allows every name, as in Cilium
// (dnsproxy GeneratePattern: a selection without DNS rules on a DNS port,
// e.g. a plain L4 allow to the server, matches all): the caller says "no
// DNS allowed here" by returning ok=false from RuleSource.DNSRules. Errors
// name the rule index and are joined, so one call reports every bad rule.
func Compile(rules []policy.PortRuleDNS) (*Matcher, error) {
	m := &Matcher{names: make(map[string]struct{}), bySuffix: make(map[string][]*matchpattern.Matcher)}
	var errs []error
	for i, r := range rules {
		if r.MatchName == "" && r.MatchPattern == "" {
			errs = append(errs, fmt.Errorf("dns[%d]: neither matchName nor matchPattern is set", i))
			continue
		}
		if r.MatchName != "" {
			n, err := normaliseName(r.MatchName)
			if err != nil {
				errs = append(errs, fmt.Errorf("dns[%d].matchName: %w", i, err))
			} else {
				m.names[n] = struct{}{}
			}
		}
		if r.MatchPattern != "" {
			p, err := matchpattern.Compile(r.MatchPattern)
			if err != nil {
				errs = append(errs, fmt.Errorf("dns[%d].matchPattern: %w", i, err))
				continue
			}
			if p.String() == "*" {
				m.all = true
			}
			if suf := literalSuffix(p.String()); suf != "" {
				m.bySuffix[suf] = append(m.bySuffix[suf], p)
			} else {
				m.other = append(m.other, p)
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(rules) == 0 {
		m.all = true
	}
	return m, nil
}

// Allow reports whether a query for qname is allowed. qname is compared
// case-insensitively, with or without its trailing dot.
func (m *Matcher) Allow(qname string) bool {
	if m == nil {
		return false
	}
	if m.all {
		return true
	}
	n := lowerName(qname)
	if _, ok := m.names[n]; ok {
		return true
	}
	for _, p := range m.other {
		if p.Match(n) {
			return true
		}
	}
	if len(m.bySuffix) == 0 {
		return false
	}
	// Every label suffix of n: "a.b.c", "b.c", "c".
	for suf := n; ; {
		for _, p := range m.bySuffix[suf] {
			if p.Match(n) {
				return true
			}
		}
		i := strings.IndexByte(suf, '.')
		if i < 0 {
			return false
		}
		suf = suf[i+1:]
	}
}

// literalSuffix returns the labels at the right end of a normalised
// pattern that hold no '*', joined; "" when the last label has one.
func literalSuffix(pattern string) string {
	i := strings.LastIndexByte(pattern, '*')
	if i < 0 {
		return pattern
	}
	j := strings.IndexByte(pattern[i:], '.')
	if j < 0 {
		return ""
	}
	return pattern[i+j+1:]
}

// normaliseName validates a matchName and returns it in lower case without
// its trailing dot.
func normaliseName(s string) (string, error) { return l7.DNSName(strings.TrimSpace(s)) }

// lowerName lower-cases ASCII letters (RFC 4343) and strips one trailing
// dot, allocating only when the name has upper-case letters.
func lowerName(s string) string {
	s = strings.TrimSuffix(s, ".")
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
