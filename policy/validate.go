package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/policy/matchpattern"
)

// maxPorts is the most ports one toPorts entry may list (as in Cilium).
const maxPorts = 40

// maxICMPFields is the most fields one icmps entry may list.
const maxICMPFields = 40

// Entities, the named peers of fromEntities / toEntities.
const (
	EntityAll           = "all"
	EntityWorld         = "world"
	EntityWorldIPv4     = "world-ipv4"
	EntityWorldIPv6     = "world-ipv6"
	EntityCluster       = "cluster"
	EntityHost          = "host"
	EntityRemoteNode    = "remote-node"
	EntityKubeAPIServer = "kube-apiserver"
	EntityIngress       = "ingress"
	EntityInit          = "init"
	EntityHealth        = "health"
	EntityUnmanaged     = "unmanaged"
	EntityNone          = "none"
)

// entitiesWithoutAddresses are the entities Cilium gives addresses that
// no address carries under wardd: a rule naming them is accepted (it is
// Cilium's language) and selects nothing, with a warning saying why
// (docs/policy-support.md).
var entitiesWithoutAddresses = map[string]string{
	EntityInit:      "the init entity selects nothing under wardd: an endpoint has its identity before its policy is written, so no traffic carries init",
	EntityUnmanaged: "the unmanaged entity selects nothing under wardd: an address ward does not manage is world (or host, remote-node, health, kube-apiserver from the node config)",
	EntityIngress:   "the ingress entity selects nothing under wardd: ward runs no Ingress/Gateway API proxy carrying that identity",
}

// Entities lists every entity name ward accepts.
var Entities = []string{
	EntityAll, EntityWorld, EntityWorldIPv4, EntityWorldIPv6, EntityCluster,
	EntityHost, EntityRemoteNode, EntityKubeAPIServer, EntityIngress,
	EntityInit, EntityHealth, EntityUnmanaged, EntityNone,
}

// validate checks p and normalizes it in place (protocols upper case, port
// names lower case, namespace defaulted). It returns the joined errors.
func (p *Policy) validate(l *errList) error {
	if p.APIVersion != APIVersion {
		if p.APIVersion == "" {
			l.add("apiVersion", "", "missing (want \""+APIVersion+"\")")
		} else {
			l.add("apiVersion", p.APIVersion, fmt.Sprintf("unsupported apiVersion %q (want %q)", p.APIVersion, APIVersion))
		}
	}
	switch p.Kind {
	case KindCNP, KindCCNP:
	case "":
		l.add("kind", "", "missing (want "+KindCNP+" or "+KindCCNP+")")
	default:
		msg := fmt.Sprintf("unsupported kind %q (want %s or %s)", p.Kind, KindCNP, KindCCNP)
		if dm := didYouMean(p.Kind, []string{KindCNP, KindCCNP}); dm != "" {
			msg += fmt.Sprintf("; did you mean %q?", dm)
		}
		l.add("kind", p.Kind, msg)
	}
	if p.Metadata.Name == "" {
		l.add("metadata.name", "", "missing")
	}
	if p.Kind == KindCNP && p.Metadata.Namespace == "" {
		p.Metadata.Namespace = defaultNSForCNP
	}
	if p.Kind == KindCCNP && p.Metadata.Namespace != "" {
		l.warn("metadata.namespace", "ignored: a clusterwide policy has no namespace")
		p.Metadata.Namespace = ""
	}
	if p.Spec == nil && len(p.Specs) == 0 {
		l.add("spec", "", "missing: a policy needs spec or specs")
	}
	if p.Spec != nil {
		p.validateRule(p.Spec, "spec", l)
	}
	for i, r := range p.Specs {
		if r == nil {
			l.add(fmt.Sprintf("specs[%d]", i), "", "must be an object, got null")
			continue
		}
		p.validateRule(r, fmt.Sprintf("specs[%d]", i), l)
	}
	p.Warnings = l.warns
	p.Gated = l.gated
	return l.err()
}

func (p *Policy) validateRule(r *Rule, path string, l *errList) {
	cw := p.Kind == KindCCNP
	switch {
	case r.EndpointSelector == nil && r.NodeSelector == nil:
		l.add(path, "", "rule must have an endpointSelector or a nodeSelector")
	case r.EndpointSelector != nil && r.NodeSelector != nil:
		l.add(path, "", "rule cannot have both endpointSelector and nodeSelector")
	}
	if r.EndpointSelector != nil {
		validateSelector(r.EndpointSelector, path+".endpointSelector", l)
		if !cw && selectorHasKey(r.EndpointSelector, LabelNamespace) {
			l.add(path+".endpointSelector", "", "a CiliumNetworkPolicy cannot select a namespace in endpointSelector: it always applies to the policy's own namespace (use a CiliumClusterwideNetworkPolicy)")
		}
	}
	if r.NodeSelector != nil {
		validateSelector(r.NodeSelector, path+".nodeSelector", l)
		if !cw {
			l.add(path+".nodeSelector", "", "nodeSelector is only allowed in a CiliumClusterwideNetworkPolicy")
		}
	}
	host := r.NodeSelector != nil
	if len(r.Ingress)+len(r.IngressDeny)+len(r.Egress)+len(r.EgressDeny) == 0 &&
		r.EnableDefaultDeny.Ingress == nil && r.EnableDefaultDeny.Egress == nil {
		l.warn(path, "rule has no ingress, ingressDeny, egress or egressDeny section: it has no effect")
	}
	for i := range r.Ingress {
		in := &r.Ingress[i]
		pp := fmt.Sprintf("%s.ingress[%d]", path, i)
		p.validatePeers(pp, l, peerFields{
			endpoints: in.FromEndpoints, endpointsName: "fromEndpoints",
			requires: in.FromRequires, requiresName: "fromRequires",
			cidr: in.FromCIDR, cidrName: "fromCIDR",
			cidrSet: in.FromCIDRSet, cidrSetName: "fromCIDRSet",
			entities: in.FromEntities, entitiesName: "fromEntities",
			nodes: in.FromNodes, nodesName: "fromNodes",
			groups: in.FromGroups, groupsName: "fromGroups",
		})
		validatePorts(in.ToPorts, in.ICMPs, pp, true, false, host, l)
		if in.Authentication != nil {
			l.add(pp+".authentication", "", "authentication (mutual authentication) is not supported by ward: a rule that requires it would be enforced without it")
		}
	}
	for i := range r.IngressDeny {
		in := &r.IngressDeny[i]
		pp := fmt.Sprintf("%s.ingressDeny[%d]", path, i)
		p.validatePeers(pp, l, peerFields{
			endpoints: in.FromEndpoints, endpointsName: "fromEndpoints",
			requires: in.FromRequires, requiresName: "fromRequires",
			cidr: in.FromCIDR, cidrName: "fromCIDR",
			cidrSet: in.FromCIDRSet, cidrSetName: "fromCIDRSet",
			entities: in.FromEntities, entitiesName: "fromEntities",
			nodes: in.FromNodes, nodesName: "fromNodes",
			groups: in.FromGroups, groupsName: "fromGroups",
		})
		validatePorts(in.ToPorts, in.ICMPs, pp, true, true, host, l)
	}
	for i := range r.Egress {
		e := &r.Egress[i]
		pp := fmt.Sprintf("%s.egress[%d]", path, i)
		p.validatePeers(pp, l, peerFields{
			endpoints: e.ToEndpoints, endpointsName: "toEndpoints",
			requires: e.ToRequires, requiresName: "toRequires",
			cidr: e.ToCIDR, cidrName: "toCIDR",
			cidrSet: e.ToCIDRSet, cidrSetName: "toCIDRSet",
			entities: e.ToEntities, entitiesName: "toEntities",
			nodes: e.ToNodes, nodesName: "toNodes",
			groups: e.ToGroups, groupsName: "toGroups",
			services: e.ToServices,
			fqdns:    e.ToFQDNs,
		})
		validatePorts(e.ToPorts, e.ICMPs, pp, false, false, host, l)
		if e.Authentication != nil {
			l.add(pp+".authentication", "", "authentication (mutual authentication) is not supported by ward: a rule that requires it would be enforced without it")
		}
	}
	for i := range r.EgressDeny {
		e := &r.EgressDeny[i]
		pp := fmt.Sprintf("%s.egressDeny[%d]", path, i)
		if len(e.ToFQDNs) > 0 {
			l.add(pp+".toFQDNs", "", "deny rules do not support toFQDNs (deny a CIDR or an entity instead)")
		}
		p.validatePeers(pp, l, peerFields{
			endpoints: e.ToEndpoints, endpointsName: "toEndpoints",
			requires: e.ToRequires, requiresName: "toRequires",
			cidr: e.ToCIDR, cidrName: "toCIDR",
			cidrSet: e.ToCIDRSet, cidrSetName: "toCIDRSet",
			entities: e.ToEntities, entitiesName: "toEntities",
			nodes: e.ToNodes, nodesName: "toNodes",
			groups: e.ToGroups, groupsName: "toGroups",
			services: e.ToServices,
		})
		validatePorts(e.ToPorts, e.ICMPs, pp, false, true, host, l)
	}
}

type peerFields struct {
	endpoints     []EndpointSelector
	endpointsName string
	requires      []EndpointSelector
	requiresName  string
	cidr          []string
	cidrName      string
	cidrSet       []CIDRRule
	cidrSetName   string
	entities      []string
	entitiesName  string
	nodes         []EndpointSelector
	nodesName     string
	groups        []Groups
	groupsName    string
	services      []Service
	fqdns         []FQDNSelector
}

func (p *Policy) validatePeers(path string, l *errList, f peerFields) {
	var present []string
	add := func(n int, name string) {
		if n > 0 {
			present = append(present, name)
		}
	}
	add(len(f.endpoints), f.endpointsName)
	add(len(f.cidr), f.cidrName)
	add(len(f.cidrSet), f.cidrSetName)
	add(len(f.entities), f.entitiesName)
	add(len(f.nodes), f.nodesName)
	add(len(f.services), "toServices")
	add(len(f.fqdns), "toFQDNs")
	add(len(f.groups), f.groupsName)
	if slices.Contains(present, "toFQDNs") && len(present) > 1 {
		other := present[0]
		if other == "toFQDNs" {
			other = present[1]
		}
		l.add(path, "", fmt.Sprintf("toFQDNs cannot be combined with %s in one rule: put them in separate egress rules", other))
	} else if len(present) > 1 {
		l.add(path, "", fmt.Sprintf("combining %s and %s in one rule is not supported: use separate rules", present[0], present[1]))
	}
	for i, g := range f.groups {
		gp := fmt.Sprintf("%s.%s[%d]", path, f.groupsName, i)
		switch {
		case g.AWS == nil:
			l.add(gp, "", "needs a provider (aws)")
		case len(g.AWS.Labels) == 0 && len(g.AWS.SecurityGroupsIds) == 0 && len(g.AWS.SecurityGroupsNames) == 0:
			l.add(gp+".aws", "", "needs labels, securityGroupsIds or securityGroupsNames")
		}
	}
	for i := range f.endpoints {
		sp := fmt.Sprintf("%s.%s[%d]", path, f.endpointsName, i)
		validateSelector(&f.endpoints[i], sp, l)
		if p.Kind == KindCNP && selectorHasKeyPrefix(&f.endpoints[i], labelNamespaceLabelsPrefix) {
			l.warn(sp, labelNamespaceLabelsPrefix+"* keys are only supported in a CiliumClusterwideNetworkPolicy; ignored here (as Cilium does)")
		}
	}
	if len(f.requires) > 0 {
		l.warn(path+"."+f.requiresName, f.requiresName+" is deprecated since Cilium 1.17 and removed in 1.18; ward still applies it to every rule selecting the same endpoints")
	}
	for i := range f.requires {
		validateSelector(&f.requires[i], fmt.Sprintf("%s.%s[%d]", path, f.requiresName, i), l)
	}
	if len(f.nodes) > 0 {
		l.gate(FeatureNodeSelectorLabels, path+"."+f.nodesName)
	}
	for i := range f.nodes {
		validateSelector(&f.nodes[i], fmt.Sprintf("%s.%s[%d]", path, f.nodesName, i), l)
	}
	for i, c := range f.cidr {
		if _, err := parseCIDR(c); err != nil {
			l.add(fmt.Sprintf("%s.%s[%d]", path, f.cidrName, i), c, err.Error())
		}
	}
	for i := range f.cidrSet {
		validateCIDRRule(&f.cidrSet[i], fmt.Sprintf("%s.%s[%d]", path, f.cidrSetName, i), l)
	}
	for i, e := range f.entities {
		if !slices.Contains(Entities, e) {
			msg := fmt.Sprintf("unknown entity %q", e)
			if dm := didYouMean(e, Entities); dm != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", dm)
			} else {
				msg += " (known: " + strings.Join(Entities, ", ") + ")"
			}
			l.add(fmt.Sprintf("%s.%s[%d]", path, f.entitiesName, i), e, msg)
		} else if msg, ok := entitiesWithoutAddresses[e]; ok {
			l.warn(fmt.Sprintf("%s.%s[%d]", path, f.entitiesName, i), msg)
		}
	}
	for i, s := range f.services {
		sp := fmt.Sprintf("%s.toServices[%d]", path, i)
		// As Cilium: an entry naming no service selects nothing, and
		// k8sServiceSelector wins over k8sService when both are set.
		switch {
		case s.K8sServiceSelector != nil:
			validateSelector(&s.K8sServiceSelector.Selector, sp+".k8sServiceSelector.selector", l)
			if s.K8sService != nil {
				l.warn(sp+".k8sService", "ignored: k8sServiceSelector is set (as Cilium does)")
			}
		case s.K8sService == nil || s.K8sService.ServiceName == "":
			l.warn(sp, "names no service (k8sService.serviceName or k8sServiceSelector): it selects nothing")
		}
	}
	for i, q := range f.fqdns {
		validateFQDN(q, fmt.Sprintf("%s.toFQDNs[%d]", path, i), l)
	}
}

func validateFQDN(q FQDNSelector, path string, l *errList) {
	switch {
	case q.MatchName == "" && q.MatchPattern == "":
		l.add(path, "", "needs matchName or matchPattern")
	case q.MatchName != "" && q.MatchPattern != "":
		l.add(path, "", "matchName and matchPattern are mutually exclusive")
	case q.MatchName != "":
		if err := validateDNSName(q.MatchName); err != nil {
			l.add(path+".matchName", q.MatchName, err.Error())
		}
	default:
		if err := matchpattern.Validate(q.MatchPattern); err != nil {
			l.add(path+".matchPattern", q.MatchPattern, fmt.Sprintf("invalid pattern %q: %v", q.MatchPattern, err))
		}
	}
}

func validateDNSName(n string) error {
	if _, err := l7.DNSName(n); err != nil {
		return fmt.Errorf("invalid DNS name: %w", err)
	}
	return nil
}

func validateSelector(es *EndpointSelector, path string, l *errList) {
	for k := range es.MatchLabels {
		if k == "" {
			l.add(path+".matchLabels", "", "empty label key")
		}
	}
	for i, e := range es.MatchExpressions {
		ep := fmt.Sprintf("%s.matchExpressions[%d]", path, i)
		if e.Key == "" {
			l.add(ep+".key", "", "missing")
		}
		switch e.Operator {
		case OpIn, OpNotIn:
			if len(e.Values) == 0 {
				l.add(ep+".values", "", fmt.Sprintf("operator %s needs at least one value", e.Operator))
			}
		case OpExists, OpDoesNotExist:
			if len(e.Values) > 0 {
				l.add(ep+".values", "", fmt.Sprintf("operator %s takes no values", e.Operator))
			}
		default:
			ops := []string{OpIn, OpNotIn, OpExists, OpDoesNotExist}
			msg := fmt.Sprintf("unknown operator %q (want In, NotIn, Exists or DoesNotExist)", e.Operator)
			// Spelled as Kubernetes spells them: the CRD's schema (and
			// metav1.LabelSelectorAsSelector) refuses "in".
			if dm := didYouMean(e.Operator, ops); dm != "" && dm != e.Operator {
				msg = fmt.Sprintf("unknown operator %q (did you mean %q?)", e.Operator, dm)
			}
			l.add(ep+".operator", e.Operator, msg)
		}
	}
}

// parseCIDR parses a prefix or a bare address (as a host prefix).
func parseCIDR(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, fmt.Errorf("empty CIDR")
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: want an address or address/length", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func validateCIDRRule(c *CIDRRule, path string, l *errList) {
	if c.CIDRGroupRef != "" || c.CIDRGroupSelector != nil {
		l.add(path, "", "cidrGroupRef and cidrGroupSelector (CiliumCIDRGroup) are not supported by ward; list the CIDRs")
		return
	}
	if c.CIDR == "" {
		l.add(path+".cidr", "", "missing")
		return
	}
	p, err := netip.ParsePrefix(c.CIDR)
	if err != nil {
		l.add(path+".cidr", c.CIDR, fmt.Sprintf("invalid CIDR %q: want address/length", c.CIDR))
		return
	}
	for i, e := range c.Except {
		ep, err := netip.ParsePrefix(e)
		if err != nil {
			l.add(fmt.Sprintf("%s.except[%d]", path, i), e, fmt.Sprintf("invalid CIDR %q: want address/length", e))
			continue
		}
		if ep.Bits() < p.Bits() || !p.Contains(ep.Addr()) {
			l.add(fmt.Sprintf("%s.except[%d]", path, i), e, fmt.Sprintf("%s is not inside %s", e, c.CIDR))
		}
	}
}

// normalizeProto returns the upper-case protocol ("" becomes ANY).
func normalizeProto(s string) (string, bool) {
	u := strings.ToUpper(s)
	switch u {
	case "":
		return ProtoAny, true
	case ProtoTCP, ProtoUDP, ProtoSCTP, ProtoAny, ProtoVRRP, ProtoIGMP:
		return u, true
	}
	return u, false
}

// extendedProto: a protocol without ports that Cilium accepts only with
// enable-extended-ip-protocols.
func extendedProto(p string) bool { return p == ProtoVRRP || p == ProtoIGMP }

// Protocol names.
const (
	ProtoAny  = "ANY"
	ProtoTCP  = "TCP"
	ProtoUDP  = "UDP"
	ProtoSCTP = "SCTP"
	// Extended IP protocols (FeatureExtendedIPProtocols): no ports.
	ProtoVRRP = "VRRP"
	ProtoIGMP = "IGMP"
)

// IsSvcName reports whether s is an IANA service name (RFC 6335 §5.1): 1-15
// characters of [a-z0-9-] (compared case-insensitively, as policies name
// ports), at least one letter, no leading, trailing or double '-'.
func IsSvcName(s string) bool {
	if len(s) == 0 || len(s) > 15 || s[0] == '-' || s[len(s)-1] == '-' || strings.Contains(s, "--") {
		return false
	}
	letter := false
	for _, c := range strings.ToLower(s) {
		switch {
		case c >= 'a' && c <= 'z':
			letter = true
		case c >= '0' && c <= '9', c == '-':
		default:
			return false
		}
	}
	return letter
}

func validatePorts(ports []PortRule, icmps []ICMPRule, path string, ingress, deny, host bool, l *errList) {
	if len(icmps) > 0 && len(ports) > 0 {
		l.add(path, "", "icmps and toPorts cannot be in the same rule: use a separate rule for ICMP")
	}
	for i := range icmps {
		ip := fmt.Sprintf("%s.icmps[%d]", path, i)
		if len(icmps[i].Fields) > maxICMPFields {
			l.add(ip+".fields", "", fmt.Sprintf("too many fields (%d), the maximum is %d", len(icmps[i].Fields), maxICMPFields))
		}
		for j := range icmps[i].Fields {
			f := &icmps[i].Fields[j]
			fp := fmt.Sprintf("%s.fields[%d]", ip, j)
			switch f.Family {
			case "", "IPv4", "IPv6":
			default:
				l.add(fp+".family", f.Family, fmt.Sprintf("unknown family %q (want IPv4 or IPv6)", f.Family))
				continue
			}
			if _, err := ICMPType(f.Family, string(f.Type)); err != nil {
				l.add(fp+".type", string(f.Type), err.Error())
			}
		}
	}
	for i := range ports {
		pr := &ports[i]
		pp := fmt.Sprintf("%s.toPorts[%d]", path, i)
		hasL7 := pr.Rules != nil
		if deny {
			if hasL7 {
				l.add(pp+".rules", "", "deny rules do not support L7 rules (deny policies are L3/L4 only)")
			}
			if len(pr.ServerNames) > 0 {
				l.add(pp+".serverNames", "", "deny rules do not support serverNames")
			}
			if pr.TerminatingTLS != nil || pr.OriginatingTLS != nil {
				l.add(pp, "", "deny rules do not support terminatingTLS/originatingTLS")
			}
		}
		if len(pr.Listener) > 0 && string(pr.Listener) != "null" {
			l.add(pp+".listener", "", "listener (CiliumEnvoyConfig) is not supported by ward")
		}
		if len(pr.Ports) > maxPorts {
			l.add(pp+".ports", "", fmt.Sprintf("too many ports (%d), the maximum is %d", len(pr.Ports), maxPorts))
		}
		isDNS := hasL7 && pr.Rules.DNS != nil
		zero := false
		for j := range pr.Ports {
			pt := &pr.Ports[j]
			ptp := fmt.Sprintf("%s.ports[%d]", pp, j)
			proto, ok := normalizeProto(pt.Protocol)
			if !ok {
				msg := fmt.Sprintf("unknown protocol %q (want TCP, UDP, SCTP or ANY)", pt.Protocol)
				if dm := didYouMean(pt.Protocol, []string{ProtoTCP, ProtoUDP, ProtoSCTP, ProtoAny}); dm != "" && !strings.EqualFold(dm, pt.Protocol) {
					msg = fmt.Sprintf("unknown protocol %q (did you mean %q?)", pt.Protocol, dm)
				}
				l.add(ptp+".protocol", pt.Protocol, msg)
			} else {
				pt.Protocol = proto
			}
			port := string(pt.Port)
			if ok && extendedProto(proto) {
				l.gate(FeatureExtendedIPProtocols, ptp+".protocol")
				if (port != "" && port != "0") || pt.EndPort != 0 {
					l.add(ptp+".port", port, fmt.Sprintf("protocol %s has no ports: leave port out (or 0)", proto))
				}
				if hasL7 {
					l.add(ptp+".protocol", proto, fmt.Sprintf("L7 rules apply to TCP only (not %s), except DNS rules", proto))
				}
				continue
			}
			if port == "" {
				l.add(ptp+".port", "", "missing")
				continue
			}
			if n, err := strconv.Atoi(port); err == nil {
				if n < 0 || n > 65535 {
					l.add(ptp+".port", port, fmt.Sprintf("port %d out of range 0-65535", n))
					continue
				}
				if n == 0 {
					zero = true
				}
				if pt.EndPort != 0 {
					switch {
					case pt.EndPort < 0 || pt.EndPort > 65535:
						l.add(ptp+".endPort", strconv.Itoa(int(pt.EndPort)), fmt.Sprintf("endPort %d out of range 0-65535", pt.EndPort))
					case int(pt.EndPort) < n:
						l.add(ptp+".endPort", strconv.Itoa(int(pt.EndPort)), fmt.Sprintf("endPort %d is below port %d", pt.EndPort, n))
					case isDNS && int(pt.EndPort) > n:
						l.add(ptp+".endPort", strconv.Itoa(int(pt.EndPort)), "DNS rules do not support port ranges")
					}
				}
			} else if IsSvcName(port) {
				pt.Port = PortString(strings.ToLower(port))
				if pt.EndPort != 0 {
					l.add(ptp+".endPort", strconv.Itoa(int(pt.EndPort)), "endPort cannot be used with a named port")
				}
			} else {
				l.add(ptp+".port", port, fmt.Sprintf("invalid port %q: want a number 0-65535 or a service name", port))
				continue
			}
			if hasL7 && !deny && !isDNS && pt.Protocol != ProtoTCP && ok {
				l.add(ptp+".protocol", pt.Protocol, fmt.Sprintf("L7 rules apply to TCP only (not %s), except DNS rules", pt.Protocol))
			}
		}
		for j, sn := range pr.ServerNames {
			if sn == "" {
				l.add(fmt.Sprintf("%s.serverNames[%d]", pp, j), "", "empty server name")
			} else if err := matchpattern.Validate(sn); err != nil {
				l.add(fmt.Sprintf("%s.serverNames[%d]", pp, j), sn, fmt.Sprintf("invalid server name %q: %v", sn, err))
			}
		}
		if !hasL7 && !deny && len(pr.Ports) == 0 && (len(pr.ServerNames) > 0 || pr.TerminatingTLS != nil || pr.OriginatingTLS != nil) {
			l.add(pp+".ports", "", "serverNames and TLS interception need explicit ports")
		}
		if len(pr.ServerNames) > 0 && hasL7 && pr.TerminatingTLS == nil && !deny {
			l.add(pp+".serverNames", "", "serverNames with L7 rules need terminatingTLS")
		}
		validateTLS(pr.TerminatingTLS, pp+".terminatingTLS", l)
		validateTLS(pr.OriginatingTLS, pp+".originatingTLS", l)
		if !hasL7 || deny {
			continue
		}
		if zero {
			l.add(pp+".ports", "", "L7 rules cannot be used with port 0 (all ports)")
		}
		if len(pr.Ports) == 0 && pr.Rules.DNS == nil {
			l.add(pp+".ports", "", "L7 rules need explicit ports")
		}
		if host && (pr.Rules.HTTP != nil || pr.Rules.Kafka != nil || pr.Rules.L7Proto != "") {
			l.add(pp+".rules", "", "host policies (nodeSelector) support only DNS L7 rules")
		}
		validateL7(pr.Rules, pp+".rules", ingress, len(pr.Ports) > 0, l)
	}
}

func validateTLS(t *TLSContext, path string, l *errList) {
	if t == nil {
		return
	}
	if t.Secret == nil {
		l.add(path+".secret", "", "missing")
		return
	}
	if t.Secret.Name == "" {
		l.add(path+".secret.name", "", "missing")
	}
}

func validateL7(r *L7Rules, path string, ingress, hasPorts bool, l *errList) {
	// Everything the filters would refuse is refused here, with the same
	// checks (package l7), so a validated policy always compiles in Envoy
	// and in the DNS proxy.
	for _, p := range l7.Check(r) {
		fp := path
		if p.Path != "" {
			fp += "." + p.Path
		}
		msg := p.Msg
		if strings.HasSuffix(p.Path, ".apiKey") {
			if dm := didYouMean(p.Value, l7.KafkaAPINames()); dm != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", dm)
			}
		}
		l.add(fp, p.Value, msg)
	}
	if r.DNS != nil {
		if ingress {
			l.add(path+".dns", "", "DNS rules are not allowed on ingress")
		}
		if !hasPorts {
			l.add(path+".dns", "", "DNS rules need an explicit port (53)")
		}
	}
	for i, d := range r.DNS {
		validateDNSRule(d, fmt.Sprintf("%s.dns[%d]", path, i), l)
	}
}

// validateDNSRule checks a DNS rule's name or pattern (l7.Check reports a
// rule with neither or both).
func validateDNSRule(d PortRuleDNS, path string, l *errList) {
	switch {
	case d.MatchName != "" && d.MatchPattern != "", d.MatchName == "" && d.MatchPattern == "":
	case d.MatchName != "":
		if err := validateDNSName(d.MatchName); err != nil {
			l.add(path+".matchName", d.MatchName, err.Error())
		}
	default:
		if err := matchpattern.Validate(d.MatchPattern); err != nil {
			l.add(path+".matchPattern", d.MatchPattern, fmt.Sprintf("invalid pattern %q: %v", d.MatchPattern, err))
		}
	}
}

// ICMPType resolves an ICMP type given as a number (0-255) or a CamelCase
// message name of the family ("IPv4" by default, or "IPv6").
func ICMPType(family, t string) (uint8, error) {
	if t == "" {
		return 0, fmt.Errorf("missing ICMP type")
	}
	if n, err := strconv.Atoi(t); err == nil {
		if n < 0 || n > 255 {
			return 0, fmt.Errorf("ICMP type %d out of range 0-255", n)
		}
		return uint8(n), nil
	}
	names := icmpv4Types
	if family == "IPv6" {
		names = icmpv6Types
	}
	if n, ok := names[t]; ok {
		return n, nil
	}
	known := make([]string, 0, len(names))
	for k := range names {
		known = append(known, k)
	}
	slices.Sort(known)
	msg := fmt.Sprintf("unknown ICMP type %q for %s", t, cmpOr(family, "IPv4"))
	if dm := didYouMean(t, known); dm != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", dm)
	}
	return 0, fmt.Errorf("%s", msg)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

var icmpv4Types = map[string]uint8{
	"EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8,
	"EchoRequest": 8, "RouterAdvertisement": 9, "RouterSelection": 10,
	"TimeExceeded": 11, "ParameterProblem": 12, "Timestamp": 13,
	"TimestampReply": 14, "Photuris": 40, "ExtendedEchoRequest": 42,
	"ExtendedEchoReply": 43,
}

var icmpv6Types = map[string]uint8{
	"DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3,
	"ParameterProblem": 4, "EchoRequest": 128, "EchoReply": 129,
	"MulticastListenerQuery": 130, "MulticastListenerReport": 131,
	"MulticastListenerDone": 132, "RouterSolicitation": 133,
	"RouterAdvertisement": 134, "NeighborSolicitation": 135,
	"NeighborAdvertisement": 136, "RedirectMessage": 137,
	"RouterRenumbering": 138, "ICMPNodeInformationQuery": 139,
	"ICMPNodeInformationResponse": 140, "InverseNeighborDiscoverySolicitation": 141,
	"InverseNeighborDiscoveryAdvertisement": 142, "HomeAgentAddressDiscoveryRequest": 144,
	"HomeAgentAddressDiscoveryReply": 145, "MobilePrefixSolicitation": 146,
	"MobilePrefixAdvertisement": 147, "DuplicateAddressRequestCodeSuffix": 157,
	"DuplicateAddressConfirmationCodeSuffix": 158, "ExtendedEchoRequest": 160,
	"ExtendedEchoReply": 161,
}
