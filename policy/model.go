package policy

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy/l7"
)

// Protocol is an IP protocol number in policy entries; ProtocolAny (0)
// matches every protocol.
type Protocol uint8

// Protocols.
const (
	ProtocolAny    Protocol = 0
	ProtocolICMP   Protocol = 1
	ProtocolIGMP   Protocol = 2 // extended (enableExtendedIPProtocols)
	ProtocolTCP    Protocol = 6
	ProtocolUDP    Protocol = 17
	ProtocolICMPv6 Protocol = 58
	ProtocolVRRP   Protocol = 112 // extended (enableExtendedIPProtocols)
	ProtocolSCTP   Protocol = 132
)

// ParseProtocol parses TCP, UDP, SCTP, ICMP, ICMPv6 or ANY (any case; ""
// is ANY).
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "", "ANY", "any", "Any":
		return ProtocolAny, nil
	case "TCP", "tcp":
		return ProtocolTCP, nil
	case "UDP", "udp":
		return ProtocolUDP, nil
	case "SCTP", "sctp":
		return ProtocolSCTP, nil
	case "ICMP", "icmp":
		return ProtocolICMP, nil
	case "ICMPv6", "ICMPV6", "icmpv6":
		return ProtocolICMPv6, nil
	case "VRRP", "vrrp":
		return ProtocolVRRP, nil
	case "IGMP", "igmp":
		return ProtocolIGMP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want TCP, UDP, SCTP, ICMP, ICMPv6 or ANY)", s)
}

func (p Protocol) String() string {
	switch p {
	case ProtocolAny:
		return "ANY"
	case ProtocolICMP:
		return "ICMP"
	case ProtocolTCP:
		return "TCP"
	case ProtocolUDP:
		return "UDP"
	case ProtocolICMPv6:
		return "ICMPv6"
	case ProtocolSCTP:
		return "SCTP"
	case ProtocolVRRP:
		return "VRRP"
	case ProtocolIGMP:
		return "IGMP"
	}
	return strconv.Itoa(int(p))
}

// Direction of traffic relative to an endpoint: flow.Direction, the one
// definition (flow records carry the same values).
type Direction = flow.Direction

// Directions.
const (
	Ingress = flow.Ingress
	Egress  = flow.Egress
)

// dirIn and dirOut index the per-direction arrays of the resolution.
const (
	dirIn  = 0
	dirOut = 1
)

// EnforcementMode is the agent-wide policy enforcement mode.
type EnforcementMode string

// Enforcement modes (Cilium's enable-policy).
const (
	// ModeDefault: a direction of an endpoint is default-deny once a rule
	// with a section for that direction selects it (unless the rule sets
	// enableDefaultDeny to false for that direction).
	ModeDefault EnforcementMode = "default"
	// ModeAlways: every endpoint is default-deny in both directions.
	ModeAlways EnforcementMode = "always"
	// ModeNever: no policy is enforced.
	ModeNever EnforcementMode = "never"
)

// Origin names the rule an entry came from.
type Origin struct {
	Policy Key
	Path   string // e.g. spec.ingress[0] or specs[1].egressDeny[0]
}

func (o *Origin) String() string {
	if o == nil {
		return ""
	}
	return o.Policy.Name + " " + o.Path
}

// EndpointPolicy is the resolved policy of one endpoint. It is immutable:
// a Snapshot hands out the same pointer until something that affects the
// endpoint changes, and then a new EndpointPolicy.
type EndpointPolicy struct {
	EndpointID uint64
	Identity   NumericIdentity
	Labels     Labels
	// Audit: drops are reported as audited and the traffic passes, at
	// L3/L4 (the datapath) and L7 (the proxies' would-be denials).
	Audit bool
	// Ingress and Egress may be shared between endpoints with the same
	// identity.
	Ingress *DirectionPolicy
	Egress  *DirectionPolicy
}

// Direction returns the policy of direction d.
func (p *EndpointPolicy) Direction(d Direction) *DirectionPolicy {
	if d == Ingress {
		return p.Ingress
	}
	return p.Egress
}

// DirectionPolicy is the resolved policy of one direction of an endpoint.
//
// Semantics (Lookup implements them and is the reference):
//  1. a Deny entry that matches (remote identity or IdentityAny, protocol or
//     ProtocolAny, port in range or Port 0) denies, whatever else matches;
//  2. otherwise, if an Allow entry without Redirect matches, the traffic is
//     allowed at L3/L4;
//  3. otherwise, if only Redirect entries match, the traffic goes to the
//     proxy and the L7Port with that protocol and port range decides: it is
//     allowed when a Selection containing the remote (or a Wildcard one)
//     allows it (AllowAll, or one of its Rules matches);
//  4. otherwise it is denied when Enforced, allowed when not.
//
// The entries are normalized for a longest-match datapath (specific
// identity before IdentityAny, then narrowest port range): Allow entries
// fully covered by a Deny are dropped, a Deny that only partly overlaps an
// Allow gets a derived Deny entry at the intersection, and a Redirect entry
// that a plain Allow covers gets an AllowAll selection for its remote.
type DirectionPolicy struct {
	Enforced bool
	// EnforcedBy are the rules that turned default deny on (a rule with
	// sections in the direction, or enableDefaultDeny), in policy order:
	// a policy that allows nothing still shows where the deny comes from
	// (`ward endpoint get`).
	EnforcedBy []*Origin
	Allow      []L4Entry // sorted by Remote, Protocol, Port, EndPort
	Deny       []L4Entry // sorted likewise
	Proxy      []*L7Port // sorted by Protocol, Port
	// Errors are conflicts found while merging (for example two L7
	// protocols on one port); the conflicting contribution was skipped.
	Errors []string
}

// L4Entry is one L3/L4 policy entry.
type L4Entry struct {
	Remote NumericIdentity // IdentityAny: every identity
	// Protocol: ProtocolAny only with Port 0 (every protocol, ICMP
	// included); a port rule with protocol ANY is expanded into TCP, UDP
	// and SCTP entries.
	Protocol Protocol
	// Port..EndPort is the destination port range; Port 0 means every
	// port. For ICMP/ICMPv6, Port is the ICMP type.
	Port, EndPort uint16
	// Redirect: the traffic must go through the proxy (see L7Port).
	Redirect bool
	Origin   *Origin
}

func (e L4Entry) covers(remote NumericIdentity, proto Protocol, port uint16) bool {
	if e.Remote != IdentityAny && e.Remote != remote {
		return false
	}
	if e.Protocol != ProtocolAny && e.Protocol != proto {
		return false
	}
	return e.Port == 0 || (port >= e.Port && port <= e.EndPort)
}

// coversEntry reports whether e covers all of o.
func (e L4Entry) coversEntry(o L4Entry) bool {
	if e.Remote != IdentityAny && e.Remote != o.Remote {
		return false
	}
	if e.Protocol != ProtocolAny && e.Protocol != o.Protocol {
		return false
	}
	if e.Port == 0 {
		return true
	}
	return o.Port != 0 && o.Port >= e.Port && o.EndPort <= e.EndPort
}

// intersect returns the overlap of e and o.
func (e L4Entry) intersect(o L4Entry) (L4Entry, bool) {
	r := e
	switch {
	case e.Remote == o.Remote, o.Remote == IdentityAny:
	case e.Remote == IdentityAny:
		r.Remote = o.Remote
	default:
		return r, false
	}
	switch {
	case e.Protocol == o.Protocol, o.Protocol == ProtocolAny:
	case e.Protocol == ProtocolAny:
		r.Protocol = o.Protocol
	default:
		return r, false
	}
	switch {
	case o.Port == 0:
	case e.Port == 0:
		r.Port, r.EndPort = o.Port, o.EndPort
	default:
		r.Port, r.EndPort = max(e.Port, o.Port), min(e.EndPort, o.EndPort)
		if r.Port > r.EndPort {
			return r, false
		}
	}
	return r, true
}

func (e L4Entry) String() string {
	s := "remote=" + e.Remote.String() + " " + e.Protocol.String()
	switch {
	case e.Port == 0:
		s += "/*"
	case e.EndPort > e.Port:
		s += fmt.Sprintf("/%d-%d", e.Port, e.EndPort)
	default:
		s += fmt.Sprintf("/%d", e.Port)
	}
	if e.Redirect {
		s += " redirect"
	}
	return s
}

// L7Port holds the L7 policy of one protocol and port range of a direction.
type L7Port struct {
	Protocol      Protocol
	Port, EndPort uint16
	// Kind is the protocol whose filter enforces the rules (KindTLS when
	// only serverNames / TLS interception apply).
	Kind l7.Kind
	// L7Proto names the generic protocol of a KindGeneric port (its
	// parser in Envoy), also when every selection allows all.
	L7Proto    string
	Selections []*L7Selection
}

// L7Selection is the L7 policy for a set of remote identities on a port.
// A request is allowed when any selection containing its remote allows it.
type L7Selection struct {
	Wildcard bool              // every remote identity
	Remotes  []NumericIdentity // sorted; when not Wildcard
	// AllowAll: every request is allowed (no L7 rules, or a plain L4 allow
	// covered this remote).
	AllowAll bool
	// Rules are the merged rules (only the Kind's field is set); a
	// request must match one of them.
	Rules       L7Rules
	ServerNames []string
	// TerminatingTLS and OriginatingTLS reference secrets; their Secret
	// namespace is filled in (the policy's namespace by default).
	TerminatingTLS *TLSContext
	OriginatingTLS *TLSContext
	Origins        []*Origin
}

// Selects reports whether s applies to remote.
func (s *L7Selection) Selects(remote NumericIdentity) bool {
	if s.Wildcard {
		return true
	}
	_, ok := slices.BinarySearch(s.Remotes, remote)
	return ok
}

// Verdict is the outcome of a Lookup: flow.Verdict, the one definition
// (flow records carry the same values).
type Verdict = flow.Verdict

// Verdicts.
const (
	VerdictDenied  = flow.Denied
	VerdictAllowed = flow.Allowed
	// VerdictAudited: denied by policy but passed because of audit mode.
	VerdictAudited = flow.Audited
	// VerdictRedirect: allowed at L3/L4 provided the proxy allows it at
	// L7. It is a step of a decision, never the verdict of a record: the
	// proxy's verdict replaces it.
	VerdictRedirect flow.Verdict = "redirect"
)

// Decision is the result of DirectionPolicy.Lookup.
type Decision struct {
	Verdict Verdict
	Reason  string
	Origin  *Origin
	// For VerdictRedirect: the first proxied port covering the flow (nil
	// when none does), and what DirectionPolicy.L7 found.
	L7         *L7Port
	Kind       l7.Kind
	Outcome    l7.Outcome
	Selections []*L7Selection
}

// L7 answers which L7 rules apply to traffic from remote with protocol
// proto to port in this direction, with l7.Select (the one definition the
// in-Envoy policy client and the DNS proxy use too): the kind of the first
// proxied port covering the flow (KindNone when none does), and over every
// covering port of that kind, l7.AllowAll when a selection of the remote
// allows every request unconditionally, else l7.MatchRules with the
// selections of the remote (their rules, server names and AllowAll flags
// decide), else l7.NoRule. buf is reused for the result.
func (d *DirectionPolicy) L7(remote NumericIdentity, proto Protocol, port uint16, buf []*L7Selection) (l7.Kind, l7.Outcome, []*L7Selection) {
	if d == nil {
		return l7.KindNone, l7.NoRule, buf[:0]
	}
	kind := l7.KindNone
	for _, lp := range d.Proxy {
		if lp.l7Range().Contains(uint8(proto), port) {
			kind = lp.Kind
			break
		}
	}
	if kind == l7.KindNone {
		return kind, l7.NoRule, buf[:0]
	}
	out, sels := d.selectKind(kind, remote, proto, port, buf)
	return kind, out, sels
}

// selectKind is l7.Select over the proxied ports of kind.
func (d *DirectionPolicy) selectKind(kind l7.Kind, remote NumericIdentity, proto Protocol, port uint16, buf []*L7Selection) (l7.Outcome, []*L7Selection) {
	return l7.Select(d.Proxy, uint8(proto), port, uint32(remote),
		func(lp *L7Port) (l7.Range, []*L7Selection) {
			if lp.Kind != kind {
				return lp.l7Range(), nil // another protocol's port: no rules of it count
			}
			return lp.l7Range(), lp.Selections
		}, selectionScope, buf)
}

// l7Range is the port range of lp in l7's terms.
func (lp *L7Port) l7Range() l7.Range {
	return l7.Range{Proto: uint8(lp.Protocol), Port: lp.Port, End: lp.EndPort}
}

// selectionScope is how a selection relates to a remote: a selection with
// server names allows nothing unconditionally (the SNI decides), so it is
// returned for the caller to check even when it allows every request.
func selectionScope(s *L7Selection, remote uint32) l7.Scope {
	switch {
	case !s.Selects(NumericIdentity(remote)):
		return l7.ScopeNone
	case s.AllowAll && len(s.ServerNames) == 0:
		return l7.ScopeAll
	}
	return l7.ScopeRules
}

// Lookup decides traffic with remote identity, protocol and destination
// port (ICMP type for ICMP) in this direction. audit turns a denial into
// VerdictAudited.
func (d *DirectionPolicy) Lookup(remote NumericIdentity, proto Protocol, port uint16, audit bool) Decision {
	deny := func(reason string, o *Origin) Decision {
		if audit {
			return Decision{Verdict: VerdictAudited, Reason: "audit mode: would be " + reason, Origin: o}
		}
		return Decision{Verdict: VerdictDenied, Reason: reason, Origin: o}
	}
	for _, e := range d.Deny {
		if e.covers(remote, proto, port) {
			return deny("denied by deny rule "+e.Origin.String(), e.Origin)
		}
	}
	var redirects []L4Entry
	for _, e := range d.Allow {
		if !e.covers(remote, proto, port) {
			continue
		}
		if !e.Redirect {
			return Decision{Verdict: VerdictAllowed, Reason: "allowed at L3/L4 by " + e.Origin.String(), Origin: e.Origin}
		}
		redirects = append(redirects, e)
	}
	if len(redirects) > 0 {
		e := redirects[0]
		dec := Decision{Verdict: VerdictRedirect, Reason: "L7 policy applies (" + e.Origin.String() + ")", Origin: e.Origin}
		for _, lp := range d.Proxy {
			if lp.l7Range().Contains(uint8(proto), port) {
				dec.L7 = lp
				break
			}
		}
		dec.Kind, dec.Outcome, dec.Selections = d.L7(remote, proto, port, nil)
		return dec
	}
	if !d.Enforced {
		return Decision{Verdict: VerdictAllowed, Reason: "no default-deny policy in this direction"}
	}
	return deny("denied by default: no rule allows it", nil)
}

// DNSRules is the DNS policy of a query from this direction's endpoint to a
// server with identity remote on port (either protocol; only DNS ports
// count, with l7.Select), by L7: ok is
// false when no DNS rule applies (the query is refused); rules is nil when
// every name is allowed, else the union of the rules of every selection of
// the remote.
func (d *DirectionPolicy) DNSRules(remote NumericIdentity, port uint16) (rules []PortRuleDNS, ok bool) {
	if d == nil {
		return nil, false
	}
	out, sels := d.selectKind(l7.KindDNS, remote, ProtocolAny, port, nil)
	switch out {
	case l7.AllowAll:
		return nil, true
	case l7.MatchRules:
		for _, s := range sels {
			if s.AllowAll {
				return nil, true
			}
			rules = append(rules, s.Rules.DNS...)
		}
		return rules, true
	}
	return nil, false
}
