package npdsclient

import (
	"fmt"
	"maps"
	"net/netip"
	"runtime/debug"
	"slices"
	"sort"
	"strings"

	"github.com/wardproxy/ward/xds/npds"
)

// This file compiles one resource at a time and folds the compiled
// resources of a delta into the indexes of a State. A delta costs the
// compilation of the resources it carries plus copying the indexes
// (map clones): nothing else is recompiled.

// compileEndpoint compiles one NetworkPolicy resource. Checks that need the
// other endpoints (an address owned twice) are indexEndpoints'.
func compileEndpoint(name string, p *npds.NetworkPolicy, compile Compiler) (*Endpoint, error) {
	e := &Endpoint{Name: name, ID: p.GetEndpointId(), Audit: p.GetAudit()}
	for i, s := range p.GetEndpointIps() {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("policy %s: endpoint_ips[%d]: %w", name, i, err)
		}
		e.IPs = append(e.IPs, ip.Unmap())
	}
	var err error
	if e.Ingress, err = compilePorts(name, "ingress", p.GetIngressPerPortPolicies(), compile); err != nil {
		return nil, err
	}
	if e.Egress, err = compilePorts(name, "egress", p.GetEgressPerPortPolicies(), compile); err != nil {
		return nil, err
	}
	return e, nil
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
				l7, err := safeCompile(compile, r)
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

// safeCompile runs the filters' compiler; a panic in it rejects the rule
// (and so its resource) instead of taking Envoy down.
func safeCompile(compile Compiler, r *npds.PortNetworkPolicyRule) (l7 any, err error) {
	defer func() {
		if p := recover(); p != nil {
			l7, err = nil, fmt.Errorf("compiler panic: %v\n%s", p, debug.Stack())
		}
	}()
	return compile(r)
}

// indexEndpoints returns the endpoint indexes of cur with changes applied
// (a nil Endpoint removes its name). A changed endpoint claiming an
// address another endpoint owns is rejected into rej (it keeps its previous
// version) and dropped from changes; the rest apply.
func indexEndpoints(byName map[string]*Endpoint, byIP map[netip.Addr]*Endpoint, changes map[string]*Endpoint, rej map[string]error) (map[string]*Endpoint, map[netip.Addr]*Endpoint) {
	for {
		nb, ni := maps.Clone(byName), maps.Clone(byIP)
		if nb == nil {
			nb = map[string]*Endpoint{}
		}
		if ni == nil {
			ni = map[netip.Addr]*Endpoint{}
		}
		for n := range changes {
			if old, ok := nb[n]; ok {
				for _, ip := range old.IPs {
					if ni[ip] == old {
						delete(ni, ip)
					}
				}
				delete(nb, n)
			}
		}
		conflict := ""
		for _, n := range slices.Sorted(maps.Keys(changes)) {
			e := changes[n]
			if e == nil {
				continue
			}
			for i, ip := range e.IPs {
				if o, ok := ni[ip]; ok && o.Name != n {
					rej[n] = fmt.Errorf("policy %s: endpoint_ips[%d]: %s already belongs to %s", n, i, ip, o.Name)
					conflict = n
					break
				}
				ni[ip] = e
			}
			if conflict != "" {
				break
			}
			nb[n] = e
		}
		if conflict == "" {
			return nb, ni
		}
		// Start over without it: its previous version (if any) stays,
		// and may in turn conflict with another change.
		delete(changes, conflict)
	}
}

// hostsRes is one compiled NetworkPolicyHosts resource.
type hostsRes struct {
	id       uint32
	exact    []netip.Addr   // plain addresses
	single   []netip.Addr   // single-address prefixes (a /32 CIDR identity)
	prefixes []netip.Prefix // masked
}

func compileHostsRes(name string, h *npds.NetworkPolicyHosts) (*hostsRes, error) {
	r := &hostsRes{id: h.GetIdentity()}
	for i, a := range h.GetHostAddresses() {
		if ip, err := netip.ParseAddr(a); err == nil {
			r.exact = append(r.exact, ip.Unmap())
			continue
		}
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return nil, fmt.Errorf("hosts %s: host_addresses[%d]: %q is neither an IP nor a prefix", name, i, a)
		}
		p = p.Masked()
		if p.IsSingleIP() {
			r.single = append(r.single, p.Addr().Unmap())
			continue
		}
		r.prefixes = append(r.prefixes, p)
	}
	return r, nil
}

// hostsIndex is the identity table of a State.
type hostsIndex struct {
	exact    map[netip.Addr]hostEntry // endpoint addresses: first
	single   map[netip.Addr]hostEntry // single-address CIDR identities: next
	prefixes []hostPrefix             // longest first
}

type hostEntry struct {
	id    uint32
	owner string // the resource name
}

type hostPrefix struct {
	p     netip.Prefix
	id    uint32
	owner string
}

// indexHosts returns cur with changes applied (nil removes). held are the
// resources cur was built from. A changed resource claiming an address (or
// single-address prefix) another resource owns is rejected into rej and
// dropped from changes.
func indexHosts(cur hostsIndex, held map[string]*hostsRes, changes map[string]*hostsRes, rej map[string]error) hostsIndex {
	for {
		next := hostsIndex{exact: maps.Clone(cur.exact), single: maps.Clone(cur.single)}
		if next.exact == nil {
			next.exact = map[netip.Addr]hostEntry{}
		}
		if next.single == nil {
			next.single = map[netip.Addr]hostEntry{}
		}
		for n := range changes {
			if old, ok := held[n]; ok {
				for _, ip := range old.exact {
					if next.exact[ip].owner == n {
						delete(next.exact, ip)
					}
				}
				for _, ip := range old.single {
					if next.single[ip].owner == n {
						delete(next.single, ip)
					}
				}
			}
		}
		conflict := ""
	names:
		for _, n := range slices.Sorted(maps.Keys(changes)) {
			h := changes[n]
			if h == nil {
				continue
			}
			for _, set := range []struct {
				m     map[netip.Addr]hostEntry
				addrs []netip.Addr
			}{{next.exact, h.exact}, {next.single, h.single}} {
				for _, ip := range set.addrs {
					if o, ok := set.m[ip]; ok && o.owner != n {
						rej[n] = fmt.Errorf("hosts %s: %s already belongs to identity %d (hosts %s)", n, ip, o.id, o.owner)
						conflict = n
						break names
					}
					set.m[ip] = hostEntry{id: h.id, owner: n}
				}
			}
		}
		if conflict != "" {
			delete(changes, conflict)
			continue
		}
		next.prefixes = make([]hostPrefix, 0, len(cur.prefixes))
		for _, p := range cur.prefixes {
			if _, changed := changes[p.owner]; !changed {
				next.prefixes = append(next.prefixes, p)
			}
		}
		for n, h := range changes {
			if h == nil {
				continue
			}
			for _, p := range h.prefixes {
				next.prefixes = append(next.prefixes, hostPrefix{p: p, id: h.id, owner: n})
			}
		}
		sort.Slice(next.prefixes, func(i, j int) bool {
			a, b := next.prefixes[i], next.prefixes[j]
			if a.p.Bits() != b.p.Bits() {
				return a.p.Bits() > b.p.Bits()
			}
			if c := a.p.Addr().Compare(b.p.Addr()); c != 0 {
				return c < 0
			}
			return strings.Compare(a.owner, b.owner) < 0
		})
		return next
	}
}
