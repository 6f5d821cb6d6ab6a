// Package memcache is ward's memcached parser for generic L7 policy
// (`rules: {l7proto: memcache, l7: [...]}`), the protocol Cilium's
// proxylib enforced through the same key/value rules: both memcached
// protocols, text (classic and meta commands) and binary, as the server
// speaks them: the connection's first byte fixes its protocol (0x80:
// binary), and a text request is framed exactly as memcached frames it
// (tokens split on spaces, case-sensitive names, a storage line memcached
// refuses dropped alone so its data block is read as the commands
// memcached would take it for, meta base64 keys decoded), so no byte the
// parser passes as data is a command to the server.
//
// A request is allowed when one rule matches it: a rule's `command` names
// the command (text names; binary opcodes map to them: Get/GetQ/GetK/GetKQ
// are get, Set/SetQ set, ...; empty: any), and at most one of `keyExact`,
// `keyPrefix`, `keyRegex` constrains every key the request names (a
// request without a key matches only rules without a key constraint). A
// denied request never reaches the server: the client gets the protocol's
// own error in its place in the stream — text `CLIENT_ERROR access
// denied`, binary status 0x0008 (authentication error) — after the
// answers to the requests before it. The parser runs inside Envoy (the
// stream framework of package proxylib); its memory is bounded by the
// request sizes it must hold (MaxValue) and the requests in flight.
package memcache

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/wardproxy/ward/policy/l7"
)

// Keys of a memcache rule (Cilium's).
const (
	KeyCommand   = "command"
	KeyExact     = "keyExact"
	KeyPrefix    = "keyPrefix"
	KeyRegex     = "keyRegex"
	maxKeyLength = 250 // memcached's KEY_MAX_LENGTH
)

// Commands are the text command names rules may name.
var Commands = []string{
	"get", "gets", "gat", "gats", "set", "add", "replace", "append", "prepend", "cas",
	"delete", "incr", "decr", "touch", "flush_all", "version", "stats", "verbosity", "quit",
	"noop", "mg", "ms", "md", "ma", "mn", "me",
}

// Validate checks rules as `ward policy validate` does (l7.Check calls it
// through the generic protocol registry).
func Validate(rules []l7.GenericRule) error {
	for i, r := range rules {
		if _, err := compileRule(r); err != nil {
			return fmt.Errorf("l7[%d]: %w", i, err)
		}
	}
	return nil
}

// rule is one compiled rule.
type rule struct {
	command string // "" any
	exact   string
	prefix  string
	re      *regexp.Regexp
	keyed   bool // one of the key constraints is set
}

func compileRule(r l7.GenericRule) (rule, error) {
	var out rule
	n := 0
	for k, v := range r {
		switch k {
		case KeyCommand:
			cmd := strings.ToLower(v)
			known := false
			for _, c := range Commands {
				known = known || c == cmd
			}
			if !known {
				return out, fmt.Errorf("command %q: unknown memcached command (known: %s)", v, strings.Join(Commands, ", "))
			}
			out.command = cmd
		case KeyExact:
			out.exact, n = v, n+1
		case KeyPrefix:
			out.prefix, n = v, n+1
		case KeyRegex:
			re, err := regexp.Compile(v)
			if err != nil {
				return out, fmt.Errorf("keyRegex %q: %w", v, err)
			}
			out.re, n = re, n+1
		default:
			return out, fmt.Errorf("unknown key %q (want command, keyExact, keyPrefix or keyRegex)", k)
		}
	}
	if n > 1 {
		return out, fmt.Errorf("keyExact, keyPrefix and keyRegex are mutually exclusive")
	}
	out.keyed = n == 1
	return out, nil
}

func (r *rule) matchKey(k string) bool {
	switch {
	case r.re != nil:
		return r.re.MatchString(k)
	case r.prefix != "":
		return strings.HasPrefix(k, r.prefix)
	}
	return k == r.exact
}

func (r *rule) allows(cmd string, keys []string) bool {
	if r.command != "" && r.command != cmd {
		return false
	}
	if !r.keyed {
		return true
	}
	if len(keys) == 0 {
		return false
	}
	for _, k := range keys {
		if !r.matchKey(k) {
			return false
		}
	}
	return true
}

// Matcher decides requests by a set of rules; nil allows everything.
type Matcher struct {
	rules []rule
	and   *Matcher // also required (And)
}

// And is the matcher that allows a request only when both m and o allow
// it (nil allows everything).
func (m *Matcher) And(o *Matcher) *Matcher {
	switch {
	case o == nil || m == o:
		return m
	case m == nil:
		return o
	}
	c := *m
	if c.and != nil {
		o = c.and.And(o)
	}
	c.and = o
	return &c
}

// Compile compiles rules (nil: a matcher that allows every request).
func Compile(rules []l7.GenericRule) (*Matcher, error) {
	m := &Matcher{}
	if rules == nil {
		return nil, nil
	}
	for i, r := range rules {
		cr, err := compileRule(r)
		if err != nil {
			return nil, fmt.Errorf("l7[%d]: %w", i, err)
		}
		m.rules = append(m.rules, cr)
	}
	return m, nil
}

// Allows reports whether some rule allows cmd on keys (all of them).
func (m *Matcher) Allows(cmd string, keys []string) bool {
	if m == nil {
		return true
	}
	if m.and != nil && !m.and.Allows(cmd, keys) {
		return false
	}
	for i := range m.rules {
		if m.rules[i].allows(cmd, keys) {
			return true
		}
	}
	return false
}
