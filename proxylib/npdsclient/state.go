// Package npdsclient is the policy subscription that runs inside Envoy (in
// libward.so): a goroutine that holds a delta-xDS stream to wardd's unix
// socket for ward's policy resources (xds/npds), compiles every update into
// an immutable State and publishes it with an atomic pointer swap. Filters
// Load the State once per request or connection; nothing mutates a State
// after it is published.
//
// A resource set that does not compile is NACKed with the reason and the
// previous State stays in force. When wardd goes away, the last State stays
// in force and the client reconnects with backoff.
package npdsclient

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds/npds"
)

// Compiler turns one rule's L7 part into the matcher its filter uses. It is
// called when an update arrives (never per request); an error rejects the
// whole update. A nil result with a nil error means "no L7 rules".
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
}

// State is one published, immutable policy view.
type State struct {
	PolicyVersion string
	HostsVersion  string
	byName        map[string]*Endpoint
	byIP          map[netip.Addr]*Endpoint
	hostsExact    map[netip.Addr]uint32
	hostsPrefix   []hostPrefix // longest first
}

type hostPrefix struct {
	p  netip.Prefix
	id uint32
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

// Identity returns the security identity of ip from the identity table
// (exact addresses first, then the longest matching prefix).
func (s *State) Identity(ip netip.Addr) (uint32, bool) {
	if s == nil {
		return 0, false
	}
	ip = ip.Unmap()
	if id, ok := s.hostsExact[ip]; ok {
		return id, true
	}
	for _, h := range s.hostsPrefix {
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

// compilePolicies builds the endpoint part of a State.
func compilePolicies(res map[string]*npds.NetworkPolicy, compile Compiler) (map[string]*Endpoint, map[netip.Addr]*Endpoint, error) {
	byName := make(map[string]*Endpoint, len(res))
	byIP := make(map[netip.Addr]*Endpoint, len(res))
	names := make([]string, 0, len(res))
	for n := range res {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		p := res[name]
		e := &Endpoint{Name: name, ID: p.GetEndpointId()}
		for i, s := range p.GetEndpointIps() {
			ip, err := netip.ParseAddr(s)
			if err != nil {
				return nil, nil, fmt.Errorf("policy %s: endpoint_ips[%d]: %w", name, i, err)
			}
			ip = ip.Unmap()
			if other, dup := byIP[ip]; dup {
				return nil, nil, fmt.Errorf("policy %s: endpoint_ips[%d]: %s already belongs to %s", name, i, ip, other.Name)
			}
			e.IPs = append(e.IPs, ip)
			byIP[ip] = e
		}
		var err error
		if e.Ingress, err = compilePorts(name, "ingress", p.GetIngressPerPortPolicies(), compile); err != nil {
			return nil, nil, err
		}
		if e.Egress, err = compilePorts(name, "egress", p.GetEgressPerPortPolicies(), compile); err != nil {
			return nil, nil, err
		}
		byName[name] = e
	}
	return byName, byIP, nil
}

func compilePorts(name, dir string, ps []*npds.PortNetworkPolicy, compile Compiler) ([]*Port, error) {
	out := make([]*Port, 0, len(ps))
	for i, pp := range ps {
		if pp.GetPort() > 65535 || pp.GetEndPort() > 65535 || (pp.GetEndPort() != 0 && pp.GetEndPort() < pp.GetPort()) {
			return nil, fmt.Errorf("policy %s: %s[%d]: bad port range %d-%d", name, dir, i, pp.GetPort(), pp.GetEndPort())
		}
		port := &Port{Port: uint16(pp.GetPort()), EndPort: uint16(pp.GetEndPort()), Protocol: pp.GetProtocol()}
		for j, r := range pp.GetRules() {
			cr := &Rule{Name: r.GetName(), Deny: r.GetDeny(), ServerNames: r.GetServerNames()}
			if ids := r.GetRemoteIdentities(); len(ids) > 0 {
				cr.Remotes = make(map[uint32]struct{}, len(ids))
				for _, id := range ids {
					cr.Remotes[id] = struct{}{}
				}
			}
			if r.GetL7() != nil {
				if r.GetDeny() {
					return nil, fmt.Errorf("policy %s: %s[%d].rules[%d]: deny rules cannot carry L7 rules", name, dir, i, j)
				}
				if compile == nil {
					return nil, fmt.Errorf("policy %s: %s[%d].rules[%d]: no L7 compiler", name, dir, i, j)
				}
				l7, err := compile(r)
				if err != nil {
					return nil, fmt.Errorf("policy %s: %s[%d].rules[%d]: %w", name, dir, i, j, err)
				}
				cr.L7 = l7
			}
			port.Rules = append(port.Rules, cr)
		}
		out = append(out, port)
	}
	return out, nil
}

// compileHosts builds the identity table of a State.
func compileHosts(res map[string]*npds.NetworkPolicyHosts) (map[netip.Addr]uint32, []hostPrefix, error) {
	exact := map[netip.Addr]uint32{}
	var prefixes []hostPrefix
	for name, h := range res {
		for i, a := range h.GetHostAddresses() {
			if ip, err := netip.ParseAddr(a); err == nil {
				exact[ip.Unmap()] = h.GetIdentity()
				continue
			}
			p, err := netip.ParsePrefix(a)
			if err != nil {
				return nil, nil, fmt.Errorf("hosts %s: host_addresses[%d]: %q is neither an IP nor a prefix", name, i, a)
			}
			p = p.Masked()
			if p.IsSingleIP() {
				exact[p.Addr().Unmap()] = h.GetIdentity()
				continue
			}
			prefixes = append(prefixes, hostPrefix{p: p, id: h.GetIdentity()})
		}
	}
	sort.Slice(prefixes, func(i, j int) bool { return prefixes[i].p.Bits() > prefixes[j].p.Bits() })
	return exact, prefixes, nil
}
