package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/wardproxy/ward/policy/l7"
)

// peer selects remote identities.
type peer interface {
	key() string
	selects(id *Identity) bool
	wildcard() bool
}

type labelPeer struct{ sel *labelSelector }

func (p labelPeer) key() string               { return p.sel.pkey }
func (p labelPeer) selects(id *Identity) bool { return p.sel.matches(id.Labels) }
func (p labelPeer) wildcard() bool            { return p.sel.wildcard() }

type entityPeer struct{ name string }

func (p entityPeer) key() string    { return "E" + p.name }
func (p entityPeer) wildcard() bool { return p.name == EntityAll }
func (p entityPeer) selects(id *Identity) bool {
	switch p.name {
	case EntityAll:
		return true
	case EntityNone:
		return false
	case EntityWorld:
		return id.isWorld()
	case EntityWorldIPv4:
		return id.ID == IdentityWorldIPv4 || id.ID == IdentityWorld ||
			(id.ID.IsLocal() && id.isWorld() && (!id.Prefix.IsValid() || id.Prefix.Addr().Is4()))
	case EntityWorldIPv6:
		return id.ID == IdentityWorldIPv6 || id.ID == IdentityWorld ||
			(id.ID.IsLocal() && id.isWorld() && (!id.Prefix.IsValid() || id.Prefix.Addr().Is6()))
	case EntityRemoteNode:
		// The remote-node identity, and the per-node identities of
		// enable-node-selector-labels (their labels carry
		// reserved:remote-node).
		return id.ID == IdentityRemoteNode || id.Labels.Has(SourceReserved, EntityRemoteNode)
	case EntityCluster:
		switch id.ID {
		case IdentityHost, IdentityUnmanaged, IdentityHealth, IdentityInit,
			IdentityRemoteNode, IdentityKubeAPIServer, IdentityIngress:
			return true
		}
		return id.ID >= MinCluster && id.ID < MinLocal
	}
	want, ok := ReservedIdentity(p.name)
	return ok && id.ID == want
}

type cidrPeer struct {
	prefix netip.Prefix
	except []netip.Prefix
	k      string
}

func newCIDRPeer(p netip.Prefix, except []netip.Prefix) cidrPeer {
	k := "C" + p.String()
	for _, e := range except {
		k += "!" + e.String()
	}
	return cidrPeer{prefix: p, except: except, k: k}
}

func (p cidrPeer) key() string    { return p.k }
func (p cidrPeer) wildcard() bool { return false }
func (p cidrPeer) selects(id *Identity) bool {
	if p.prefix.Bits() == 0 && len(p.except) == 0 {
		// 0.0.0.0/0 and ::/0 are the world of that family.
		if p.prefix.Addr().Is4() {
			return entityPeer{EntityWorldIPv4}.selects(id)
		}
		return entityPeer{EntityWorldIPv6}.selects(id)
	}
	if !id.Prefix.IsValid() || id.Prefix.Bits() < p.prefix.Bits() || !p.prefix.Contains(id.Prefix.Addr()) {
		return false
	}
	for _, e := range p.except {
		if id.Prefix.Bits() >= e.Bits() && e.Contains(id.Prefix.Addr()) {
			return false
		}
	}
	return true
}

type fqdnPeer struct{ label Label }

func (p fqdnPeer) key() string    { return "F" + p.label.Key }
func (p fqdnPeer) wildcard() bool { return false }
func (p fqdnPeer) selects(id *Identity) bool {
	return id.ID.IsLocal() && id.Labels.Has(SourceFQDN, p.label.Key)
}

// andPeer is a peer restricted by fromRequires/toRequires.
type andPeer struct {
	p   peer
	req *labelSelector
}

func (p andPeer) key() string    { return p.p.key() + "&" + p.req.key }
func (p andPeer) wildcard() bool { return false }
func (p andPeer) selects(id *Identity) bool {
	return p.p.selects(id) && p.req.matches(id.Labels)
}

// portSpec is one resolved-or-named port of a toPorts entry.
type portSpec struct {
	proto         Protocol // ProtocolAny for ANY
	port, endPort uint16   // port 0: all
	name          string   // named port, resolved per endpoint
}

// portRule is a compiled toPorts entry (or an icmps entry, or "all ports").
type portRule struct {
	ports       []portSpec
	l7          *L7Rules
	kind        l7.Kind // KindNone when no proxy is needed
	serverNames []string
	termTLS     *TLSContext
	origTLS     *TLSContext
}

// section is a compiled ingress/egress(/Deny) entry.
type section struct {
	origin   *Origin
	peers    []peer // nil with allPeers false: nothing
	allPeers bool
	rules    []portRule // nil: all ports and protocols
	deny     bool
}

// compiledRule is a Rule ready for resolution.
type compiledRule struct {
	subject     *labelSelector
	subjectSel  *selection // cached subject selection (never garbage collected)
	host        bool       // nodeSelector: applies to the host endpoint
	sections    [2][]*section
	defaultDeny [2]bool
	origin      *Origin // the rule (Path "spec" or "specs[i]"), for DirectionPolicy.EnforcedBy
	requires    [2][]*labelSelector
}

// compiledPolicy is a Policy compiled against the current services.
type compiledPolicy struct {
	policy      *Policy
	seq         int // insertion order of the policy key
	rules       []*compiledRule
	cidrs       []netip.Prefix // every CIDR named, for CIDR identities
	fqdns       []FQDNSelector
	usesService bool
	warnings    []string
}

func namespaceReq(ns string) requirement {
	return requirement{source: SourceK8s, key: LabelNamespace, op: OpIn, values: []string{ns}}
}

// peerSelector compiles a peer endpoint selector, adding the policy's
// namespace in a CiliumNetworkPolicy when the selector names none.
func peerSelector(es *EndpointSelector, ns string) *labelSelector {
	sel := compileSelector(es)
	if ns != "" {
		// Namespace labels are ignored in a CiliumNetworkPolicy.
		sel = sel.withoutKeyPrefix(labelNamespaceLabelsPrefix)
	}
	if ns != "" && !selectorHasKey(es, LabelNamespace) && !selectorHasSource(es, SourceReserved) {
		sel = newLabelSelector(append(slices.Clone(sel.reqs), namespaceReq(ns)))
	}
	return sel
}

func (r *Repository) compilePolicy(p *Policy) *compiledPolicy {
	cp := &compiledPolicy{policy: p}
	ns := ""
	if !p.Clusterwide() {
		ns = p.Metadata.Namespace
	}
	rulePath := func(i int) string {
		if p.Spec != nil {
			if i == 0 {
				return "spec"
			}
			return fmt.Sprintf("specs[%d]", i-1)
		}
		return fmt.Sprintf("specs[%d]", i)
	}
	for i, rule := range p.Rules() {
		rp := rulePath(i)
		cr := &compiledRule{origin: &Origin{Policy: p.Key(), Path: rp}}
		if rule.EndpointSelector != nil {
			cr.subject = compileSelector(rule.EndpointSelector)
			if ns != "" && !selectorHasSource(rule.EndpointSelector, SourceReserved) {
				cr.subject = newLabelSelector(append(slices.Clone(cr.subject.reqs), namespaceReq(ns)))
			}
		} else {
			cr.subject = compileSelector(rule.NodeSelector)
			cr.host = true
		}
		for d, n := range [2]int{len(rule.Ingress) + len(rule.IngressDeny), len(rule.Egress) + len(rule.EgressDeny)} {
			cr.defaultDeny[d] = n > 0
		}
		if v := rule.EnableDefaultDeny.Ingress; v != nil {
			cr.defaultDeny[dirIn] = *v
		}
		if v := rule.EnableDefaultDeny.Egress; v != nil {
			cr.defaultDeny[dirOut] = *v
		}
		for j := range rule.Ingress {
			in := &rule.Ingress[j]
			o := &Origin{Policy: p.Key(), Path: fmt.Sprintf("%s.ingress[%d]", rp, j)}
			for k := range in.FromRequires {
				cr.requires[dirIn] = append(cr.requires[dirIn], peerSelector(&in.FromRequires[k], ns))
			}
			s := r.compileSection(cp, o, ns, false, in.FromEndpoints, in.FromCIDR, in.FromCIDRSet, in.FromEntities, in.FromNodes, nil, nil, len(in.FromRequires) > 0)
			groupsSelectNothing(s, len(in.FromGroups))
			s.rules = compilePortRules(in.ToPorts, in.ICMPs, ns)
			cr.sections[dirIn] = append(cr.sections[dirIn], s)
		}
		for j := range rule.IngressDeny {
			in := &rule.IngressDeny[j]
			o := &Origin{Policy: p.Key(), Path: fmt.Sprintf("%s.ingressDeny[%d]", rp, j)}
			s := r.compileSection(cp, o, ns, true, in.FromEndpoints, in.FromCIDR, in.FromCIDRSet, in.FromEntities, in.FromNodes, nil, nil, len(in.FromRequires) > 0)
			groupsSelectNothing(s, len(in.FromGroups))
			s.rules = compilePortRules(in.ToPorts, in.ICMPs, ns)
			cr.sections[dirIn] = append(cr.sections[dirIn], s)
		}
		for j := range rule.Egress {
			e := &rule.Egress[j]
			o := &Origin{Policy: p.Key(), Path: fmt.Sprintf("%s.egress[%d]", rp, j)}
			for k := range e.ToRequires {
				cr.requires[dirOut] = append(cr.requires[dirOut], peerSelector(&e.ToRequires[k], ns))
			}
			s := r.compileSection(cp, o, ns, false, e.ToEndpoints, e.ToCIDR, e.ToCIDRSet, e.ToEntities, e.ToNodes, e.ToServices, e.ToFQDNs, len(e.ToRequires) > 0)
			groupsSelectNothing(s, len(e.ToGroups))
			s.rules = compilePortRules(e.ToPorts, e.ICMPs, ns)
			cr.sections[dirOut] = append(cr.sections[dirOut], s)
		}
		for j := range rule.EgressDeny {
			e := &rule.EgressDeny[j]
			o := &Origin{Policy: p.Key(), Path: fmt.Sprintf("%s.egressDeny[%d]", rp, j)}
			s := r.compileSection(cp, o, ns, true, e.ToEndpoints, e.ToCIDR, e.ToCIDRSet, e.ToEntities, e.ToNodes, e.ToServices, nil, len(e.ToRequires) > 0)
			groupsSelectNothing(s, len(e.ToGroups))
			s.rules = compilePortRules(e.ToPorts, e.ICMPs, ns)
			cr.sections[dirOut] = append(cr.sections[dirOut], s)
		}
		cp.rules = append(cp.rules, cr)
	}
	return cp
}

func (r *Repository) compileSection(cp *compiledPolicy, o *Origin, ns string, deny bool,
	eps []EndpointSelector, cidrs []string, cidrSet []CIDRRule, entities []string,
	nodes []EndpointSelector, services []Service, fqdns []FQDNSelector, hasRequires bool) *section {
	s := &section{origin: o, deny: deny}
	for i := range eps {
		sel := peerSelector(&eps[i], ns)
		if ns == "" && sel.wildcard() {
			// In a clusterwide policy an empty fromEndpoints/toEndpoints
			// selector means every pod of every namespace, not every
			// identity (Cilium adds "namespace Exists"); use the all
			// entity for that.
			sel = newLabelSelector([]requirement{{source: SourceK8s, key: LabelNamespace, op: OpExists}})
		}
		s.peers = append(s.peers, labelPeer{sel})
	}
	for i := range nodes {
		sel := compileSelector(&nodes[i])
		sel = newLabelSelector(append(slices.Clone(sel.reqs), requirement{source: SourceReserved, key: "remote-node", op: OpExists}))
		s.peers = append(s.peers, labelPeer{sel})
	}
	for _, c := range cidrs {
		p, err := parseCIDR(c)
		if err != nil {
			continue
		}
		cp.cidrs = append(cp.cidrs, p)
		s.peers = append(s.peers, newCIDRPeer(p, nil))
	}
	for _, c := range cidrSet {
		p, err := netip.ParsePrefix(c.CIDR)
		if err != nil {
			continue
		}
		p = p.Masked()
		var ex []netip.Prefix
		for _, e := range c.Except {
			if ep, err := netip.ParsePrefix(e); err == nil {
				ex = append(ex, ep.Masked())
			}
		}
		cp.cidrs = append(cp.cidrs, p)
		cp.cidrs = append(cp.cidrs, ex...)
		s.peers = append(s.peers, newCIDRPeer(p, ex))
	}
	for _, e := range entities {
		s.peers = append(s.peers, entityPeer{e})
	}
	for _, svc := range services {
		cp.usesService = true
		s.peers = append(s.peers, r.servicePeers(svc, cp)...)
	}
	for _, q := range fqdns {
		cp.fqdns = append(cp.fqdns, q)
		s.peers = append(s.peers, fqdnPeer{q.Label()})
	}
	n := len(eps) + len(nodes) + len(cidrs) + len(cidrSet) + len(entities) + len(services) + len(fqdns)
	if n == 0 {
		// No L3 peer: the rule applies to every peer when it names ports
		// (or requirements); an empty rule allows nothing.
		s.allPeers = true
	}
	return s
}

// groupsSelectNothing: a toGroups/fromGroups rule selects nothing itself
// (never every peer): its derivative policy (policy/groups) carries the
// resolved addresses.
func groupsSelectNothing(s *section, n int) {
	if n > 0 {
		s.allPeers = false
		s.peers = append(s.peers, entityPeer{EntityNone})
	}
}

// servicePeers resolves a toServices entry against the known services.
func (r *Repository) servicePeers(svc Service, cp *compiledPolicy) []peer {
	var matched []*ServiceInfo
	// As Cilium (pkg/policy/k8s: serviceSelectorMatches, serviceRefMatches):
	// the selector wins over the name, and an empty namespace matches
	// services of every namespace.
	switch {
	case svc.K8sServiceSelector != nil:
		sel := compileSelector(&svc.K8sServiceSelector.Selector)
		sns := svc.K8sServiceSelector.Namespace
		for _, s := range r.services {
			if (sns == "" || s.Namespace == sns) && sel.matches(K8sLabels(s.Labels, "")) {
				matched = append(matched, s)
			}
		}
	case svc.K8sService != nil && svc.K8sService.ServiceName != "":
		for _, s := range r.services {
			if s.Name == svc.K8sService.ServiceName && (svc.K8sService.Namespace == "" || s.Namespace == svc.K8sService.Namespace) {
				matched = append(matched, s)
			}
		}
	}
	if len(matched) == 0 {
		cp.warnings = append(cp.warnings, "toServices selects no known service")
		return []peer{entityPeer{EntityNone}}
	}
	slices.SortFunc(matched, func(a, b *ServiceInfo) int { return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) })
	var out []peer
	for _, s := range matched {
		if len(s.Selector) > 0 {
			es := &EndpointSelector{MatchLabels: map[string]string{}}
			for k, v := range s.Selector {
				es.MatchLabels["k8s:"+k] = v
			}
			es.MatchLabels["k8s:"+LabelNamespace] = s.Namespace
			out = append(out, labelPeer{compileSelector(es)})
			continue
		}
		for _, p := range s.Prefixes {
			cp.cidrs = append(cp.cidrs, p.Masked())
			out = append(out, newCIDRPeer(p.Masked(), nil))
		}
	}
	return out
}

func protoNum(s string) Protocol {
	p, err := ParseProtocol(s)
	if err != nil {
		return ProtocolAny
	}
	return p
}

func compilePortRules(prs []PortRule, icmps []ICMPRule, ns string) []portRule {
	var out []portRule
	for _, ir := range icmps {
		var rule portRule
		for _, f := range ir.Fields {
			t, err := ICMPType(f.Family, string(f.Type))
			if err != nil {
				continue
			}
			proto := ProtocolICMP
			if f.Family == "IPv6" {
				proto = ProtocolICMPv6
			}
			rule.ports = append(rule.ports, portSpec{proto: proto, port: uint16(t), endPort: uint16(t)})
		}
		out = append(out, rule)
	}
	for _, pr := range prs {
		rule := portRule{l7: l7WithNamespace(pr.Rules, ns), serverNames: pr.ServerNames,
			termTLS: tlsWithNamespace(pr.TerminatingTLS, ns), origTLS: tlsWithNamespace(pr.OriginatingTLS, ns)}
		switch k := pr.Rules.Kind(); {
		case k != l7.KindNone:
			rule.kind = k
		case pr.Rules != nil || len(pr.ServerNames) > 0 || pr.TerminatingTLS != nil || pr.OriginatingTLS != nil:
			rule.kind = l7.KindTLS
			if pr.Rules != nil && pr.TerminatingTLS != nil {
				rule.kind = l7.KindHTTP
			}
		}
		if len(pr.Ports) == 0 {
			rule.ports = []portSpec{{proto: ProtocolAny}}
		}
		for _, pp := range pr.Ports {
			proto := protoNum(pp.Protocol)
			if pp.Port == "" { // extended IP protocols: no ports
				rule.ports = append(rule.ports, portSpec{proto: proto})
				continue
			}
			if n, err := strconv.Atoi(string(pp.Port)); err == nil {
				end := n
				if pp.EndPort > 0 {
					end = int(pp.EndPort)
				}
				if n == 0 {
					end = 0
				}
				if proto == ProtocolAny && n != 0 {
					// Like Cilium, ANY with a port means TCP, UDP and SCTP
					// (never ICMP).
					for _, p := range []Protocol{ProtocolTCP, ProtocolUDP, ProtocolSCTP} {
						rule.ports = append(rule.ports, portSpec{proto: p, port: uint16(n), endPort: uint16(end)})
					}
					continue
				}
				rule.ports = append(rule.ports, portSpec{proto: proto, port: uint16(n), endPort: uint16(end)})
			} else {
				rule.ports = append(rule.ports, portSpec{proto: proto, name: string(pp.Port)})
			}
		}
		out = append(out, rule)
	}
	return out
}

// l7WithNamespace is r with every headerMatches secret that names no
// namespace given the policy's (Cilium reads it from the policy's
// namespace); r itself when none lacks one.
func l7WithNamespace(r *L7Rules, ns string) *L7Rules {
	return r.WithHeaderMatches(func(hm *l7.HeaderMatch) *l7.HeaderMatch {
		if hm.Secret == nil || hm.Secret.Namespace != "" {
			return nil
		}
		m, s := *hm, *hm.Secret
		s.Namespace = ns
		m.Secret = &s
		return &m
	})
}

func tlsWithNamespace(t *TLSContext, ns string) *TLSContext {
	if t == nil {
		return nil
	}
	c := *t
	if c.Secret != nil {
		s := *c.Secret
		if s.Namespace == "" {
			s.Namespace = ns
		}
		c.Secret = &s
	}
	return &c
}
