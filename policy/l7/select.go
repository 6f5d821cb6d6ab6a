package l7

// Range is the port range of a proxied port's rules. Port 0 is every port;
// End below Port (0 included) means Port alone. Proto is an IP protocol
// number; 0 on either side matches every protocol.
type Range struct {
	Proto     uint8
	Port, End uint16
}

// Contains reports whether r covers traffic with IP protocol proto to port.
func (r Range) Contains(proto uint8, port uint16) bool {
	if r.Proto != 0 && proto != 0 && r.Proto != proto {
		return false
	}
	if r.Port == 0 {
		return true
	}
	if r.End < r.Port {
		return port == r.Port
	}
	return port >= r.Port && port <= r.End
}

// Scope is how one rule of a port relates to a remote identity.
type Scope uint8

// Scopes.
const (
	// ScopeNone: the rule does not select the remote.
	ScopeNone Scope = iota
	// ScopeRules: the rule selects the remote; its L7 rules decide.
	ScopeRules
	// ScopeAll: the rule selects the remote and has no L7 rules (or a
	// plain L3/L4 allow covers the remote): every request is allowed.
	ScopeAll
	// ScopeDeny: a deny rule selects the remote.
	ScopeDeny
)

// Outcome is what Select found for a flow.
type Outcome uint8

// Outcomes.
const (
	// NoRule: no rule of a covering port selects the remote: deny (a
	// proxied port without rules for the remote fails closed).
	NoRule Outcome = iota
	// Deny: a deny rule selects the remote.
	Deny
	// AllowAll: a rule without L7 rules selects the remote; every request
	// is allowed.
	AllowAll
	// MatchRules: only rules with L7 rules select the remote; a request is
	// allowed when one of them allows it.
	MatchRules
)

func (o Outcome) String() string {
	switch o {
	case NoRule:
		return "no rule"
	case Deny:
		return "deny"
	case AllowAll:
		return "allow all"
	case MatchRules:
		return "match rules"
	}
	return "unknown"
}

// Select is the one definition of which L7 rules apply to a flow from
// remote with IP protocol proto to port. Every port range that covers the
// flow counts (allow rules add up, so overlapping ranges are all
// consulted): a deny rule selecting the remote wins (no rules returned);
// otherwise a rule selecting it without L7 rules allows every request (that
// first rule is returned, for records); otherwise the rules
// that select it with L7 rules apply, in port then rule order, appended to
// buf[:0] (callers on the request path pass a reused buffer; Select does
// not allocate when it is big enough). The policy engine, the in-Envoy
// policy client, the DNS proxy glue and `ward policy test` all decide with
// it; they differ only in how they store ports and rules, which rangeOf
// and scope read.
func Select[P, R any](ports []P, proto uint8, port uint16, remote uint32,
	rangeOf func(P) (Range, []R), scope func(R, uint32) Scope, buf []R) (Outcome, []R) {
	out := buf[:0]
	all := false
	var allRule R
	for _, p := range ports {
		r, rules := rangeOf(p)
		if !r.Contains(proto, port) {
			continue
		}
		for _, rule := range rules {
			switch scope(rule, remote) {
			case ScopeDeny:
				return Deny, buf[:0]
			case ScopeAll:
				if !all {
					all, allRule = true, rule
				}
			case ScopeRules:
				out = append(out, rule)
			}
		}
	}
	switch {
	case all:
		return AllowAll, append(out[:0], allRule)
	case len(out) > 0:
		return MatchRules, out
	}
	return NoRule, out
}
