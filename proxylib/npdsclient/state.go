// Package npdsclient is the policy subscription that runs inside Envoy (in
// libward.so): a goroutine that holds a delta-xDS stream to wardd's unix
// socket for ward's policy resources (xds/npds), compiles every update into
// an immutable State and publishes it with an atomic pointer swap. Filters
// Load the State once per request or connection; nothing mutates a State
// after it is published.
//
// Resources are compiled and applied one by one: a delta recompiles only
// the resources it carries. A resource that does not compile (or claims an
// address another one owns) is rejected on its own — it keeps its previous
// version, or stays absent if it is new — while the rest of the delta
// applies; the response is NACKed naming every resource currently rejected
// (a google.rpc.BadRequest field violation per resource), so the server
// knows exactly what is in force and can resend them. When wardd goes
// away, the last State stays in force and the client reconnects with
// backoff, telling the new server the versions it holds. A panic in the
// compiler rejects the resource; a panic anywhere else in the stream ends
// that stream (the last State stays) and the client reconnects.
package npdsclient

import (
	"net/netip"

	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds/npds"
)

// Compiler turns one rule's L7 part into the matcher its filter uses. It is
// called when an update arrives (never per request); an error rejects the
// rule's resource (one endpoint's policy). A nil result with a nil error
// means "no L7 rules".
type Compiler func(rule *npds.PortNetworkPolicyRule) (any, error)

// Rule is one compiled rule of a port.
type Rule struct {
	Name        string
	Remotes     map[uint32]struct{} // nil: every remote identity
	Deny        bool
	ServerNames []string
	L7          any // the Compiler's result; nil when the rule has no L7 part
}

// Port holds the rules of one port range.
type Port struct {
	Port, EndPort uint16 // EndPort 0: just Port; Port 0: every port
	Protocol      npds.Protocol
	Rules         []*Rule
}

// Endpoint is the compiled policy of one endpoint.
type Endpoint struct {
	Name    string
	ID      uint64
	IPs     []netip.Addr
	Ingress []*Port
	Egress  []*Port
	// Audit is policy audit mode: what the rules would deny passes and is
	// recorded as flow.Audited.
	Audit bool
}

// State is one published, immutable policy view.
type State struct {
	PolicyVersion string
	HostsVersion  string
	byName        map[string]*Endpoint
	byIP          map[netip.Addr]*Endpoint
	hosts         hostsIndex
}

// Endpoint returns the endpoint policy by name.
func (s *State) Endpoint(name string) (*Endpoint, bool) {
	if s == nil {
		return nil, false
	}
	e, ok := s.byName[name]
	return e, ok
}

// EndpointByIP returns the endpoint that owns ip.
func (s *State) EndpointByIP(ip netip.Addr) (*Endpoint, bool) {
	if s == nil {
		return nil, false
	}
	e, ok := s.byIP[ip.Unmap()]
	return e, ok
}

// Identity returns the security identity of ip from the identity table:
// an endpoint address first, then a single-address CIDR identity, then
// the longest matching prefix.
func (s *State) Identity(ip netip.Addr) (uint32, bool) {
	if s == nil {
		return 0, false
	}
	ip = ip.Unmap()
	if h, ok := s.hosts.exact[ip]; ok {
		return h.id, true
	}
	if h, ok := s.hosts.single[ip]; ok {
		return h.id, true
	}
	for _, h := range s.hosts.prefixes {
		if h.p.Contains(ip) {
			return h.id, true
		}
	}
	return 0, false
}

// Verdict is the outcome of looking up a connection's rules: l7.Outcome,
// the one definition of which L7 rules apply (l7.Select).
type Verdict = l7.Outcome

// Verdicts of Lookup.
const (
	// NoPolicy: no rule of the port selects the remote: deny.
	NoPolicy = l7.NoRule
	// Denied: a deny rule selects the remote.
	Denied = l7.Deny
	// AllowAll: a rule without L7 part selects the remote (L7 rules on the
	// same port are moot).
	AllowAll = l7.AllowAll
	// CheckL7: only rules with L7 parts select the remote; the request is
	// allowed when one of Matchers allows it.
	CheckL7 = l7.MatchRules
)

// Lookup selects the rules of a direction and port for a remote identity
// with l7.Select. For CheckL7 it returns the matching rules (each with a
// non-nil L7), appended to buf[:0] so a caller on the request path can
// reuse one.
func (e *Endpoint) Lookup(ingress bool, port uint16, remote uint32, buf []*Rule) (Verdict, []*Rule) {
	if e == nil {
		return NoPolicy, nil
	}
	ports := e.Egress
	if ingress {
		ports = e.Ingress
	}
	v, rules := l7.Select(ports, 0, port, remote, portRules, ruleScope, buf)
	if v != CheckL7 {
		return v, nil
	}
	return v, rules
}

func portRules(p *Port) (l7.Range, []*Rule) {
	return l7.Range{Port: p.Port, End: p.EndPort}, p.Rules
}

func ruleScope(r *Rule, remote uint32) l7.Scope {
	if r.Remotes != nil {
		if _, ok := r.Remotes[remote]; !ok {
			return l7.ScopeNone
		}
	}
	switch {
	case r.Deny:
		return l7.ScopeDeny
	case r.L7 == nil:
		return l7.ScopeAll
	}
	return l7.ScopeRules
}
