package l7

import (
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"
)

// MaxRegexLen is the longest path, method or host expression a rule may
// hold. Envoy's default RE2 program-size limit (100) rejects ordinary long
// path alternations and, in Cilium, the whole policy update with them
// (cilium#41314); ward takes anything up to this size.
const MaxRegexLen = 32 << 10

// Regex compiles a path, method or host expression the one way ward
// matches it: RE2 (Go regexp, Perl syntax, as Cilium validates them)
// anchored as a full match, ^(?:expr)$, like Envoy's RE2::FullMatch. It
// returns the compiled expression and its parse tree (unanchored), or an
// error for an expression longer than MaxRegexLen or one that does not
// parse.
func Regex(expr string) (*regexp.Regexp, *syntax.Regexp, error) {
	if len(expr) > MaxRegexLen {
		return nil, nil, fmt.Errorf("regex is %d bytes long, more than the %d allowed", len(expr), MaxRegexLen)
	}
	tree, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return nil, nil, fmt.Errorf("invalid regex %q: %s", short(expr), strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
	// A well-formed expression cannot escape the group it is wrapped in,
	// except through an unterminated \Q; the parsed form has none.
	inner := expr
	if strings.Contains(expr, `\Q`) {
		inner = tree.String()
	}
	re, err := regexp.Compile(`^(?:` + inner + `)$`)
	if err != nil {
		return nil, nil, fmt.Errorf("invalid regex %q: %s", short(expr), strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
	return re, tree, nil
}

func short(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// ParseHeader parses a headers entry: "Name" (presence) or "Name: value"
// (Cilium splits at the first space and trims ':' from the end of the
// name). The name is returned lower case.
func ParseHeader(s string) (name, value string, hasValue bool, err error) {
	name, value, hasValue = strings.Cut(s, " ")
	name = strings.TrimRight(name, ":")
	if name == "" {
		return "", "", false, fmt.Errorf("empty header name in %q", s)
	}
	return strings.ToLower(name), value, hasValue, nil
}
