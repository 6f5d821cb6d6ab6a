package xds

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds/npds"
)

// EndpointInfo names an endpoint and its addresses for the translation.
type EndpointInfo struct {
	Name string
	ID   uint64
	IPs  []netip.Addr
}

// NetworkPolicy translates an endpoint's resolved policy into the resource
// the in-Envoy filters enforce: one PortNetworkPolicy per proxy port (the
// L7Ports of each direction) with one rule per selection. Plain L3/L4
// entries are the datapath's business (BPF maps); only redirected ports
// reach the proxy, so only they are translated.
func NetworkPolicy(ep EndpointInfo, p *policy.EndpointPolicy) *npds.NetworkPolicy {
	np, _ := networkPolicy(ep, p, nil)
	return np
}

// SecretValues resolves a headerMatches secret: the value of the secret
// namespace/name (secrets.Source.Value), or why there is none.
type SecretValues func(namespace, name string) (string, error)

// networkPolicy is NetworkPolicy with headerMatches secrets resolved by sv
// (nil: none resolved). A rule whose secret resolves carries its value in
// the header match's Value, the reference kept (the filter never prints
// it); one that does not keeps the policy's fallback value (none: the
// match never succeeds) and its error is returned.
func networkPolicy(ep EndpointInfo, p *policy.EndpointPolicy, sv SecretValues) (*npds.NetworkPolicy, secretUse) {
	out := &npds.NetworkPolicy{Name: ep.Name, EndpointId: ep.ID}
	for _, ip := range ep.IPs {
		out.EndpointIps = append(out.EndpointIps, ip.String())
	}
	if p == nil {
		return out, secretUse{}
	}
	out.Audit = p.Audit
	var use secretUse
	out.IngressPerPortPolicies = ports(p.Ingress, sv, &use)
	out.EgressPerPortPolicies = ports(p.Egress, sv, &use)
	return out, use
}

// secretUse is what a translation did with headerMatches secrets.
type secretUse struct {
	refs int     // secrets referenced
	errs []error // those that did not resolve
}

// withSecrets is rules with the value of each headerMatches secret sv
// resolves in its Value (a copy; rules itself when it has no secret).
func withSecrets(rules *l7.Rules, sv SecretValues, use *secretUse) *l7.Rules {
	return rules.WithHeaderMatches(func(hm *l7.HeaderMatch) *l7.HeaderMatch {
		if hm.Secret == nil {
			return nil
		}
		use.refs++
		v, err := "", error(nil)
		if sv == nil {
			err = fmt.Errorf("headerMatches secret %s/%s: no secrets directory (secretsDir in the node config)", hm.Secret.Namespace, hm.Secret.Name)
		} else if v, err = sv(hm.Secret.Namespace, hm.Secret.Name); err != nil {
			err = fmt.Errorf("headerMatches %s: %w", hm.Name, err)
		}
		if err != nil {
			use.errs = append(use.errs, err)
		}
		if v == "" {
			return nil // the fallback value, if any (Cilium: value when the secret is missing)
		}
		m := *hm
		m.Value = v
		return &m
	})
}

func ports(d *policy.DirectionPolicy, sv SecretValues, use *secretUse) []*npds.PortNetworkPolicy {
	if d == nil {
		return nil
	}
	var out []*npds.PortNetworkPolicy
	for _, lp := range d.Proxy {
		if !lp.Kind.InEnvoy() {
			continue // DNS goes to the agent's DNS proxy, never to Envoy
		}
		pp := &npds.PortNetworkPolicy{Port: uint32(lp.Port), EndPort: uint32(lp.EndPort), Protocol: protocol(lp.Protocol)}
		for _, s := range lp.Selections {
			r := &npds.PortNetworkPolicyRule{ServerNames: s.ServerNames}
			if !s.Wildcard {
				r.RemoteIdentities = make([]uint32, 0, len(s.Remotes))
				for _, id := range s.Remotes {
					r.RemoteIdentities = append(r.RemoteIdentities, uint32(id))
				}
				if len(r.RemoteIdentities) == 0 {
					continue // selects nobody (yet)
				}
			}
			if len(s.Origins) > 0 {
				r.Name = s.Origins[0].String()
			}
			switch {
			case !s.AllowAll && lp.Kind != l7.KindTLS:
				// The rules cross to Envoy in their own encoding: no
				// copy into a second set of types and back.
				r.L7 = npds.NewL7(withSecrets(&s.Rules, sv, use))
			case lp.Kind == l7.KindGeneric:
				// Allow all, but through the port's parser: the rule
				// names the protocol, with no rules.
				r.L7 = npds.NewL7(&l7.Rules{L7Proto: lp.L7Proto})
			}
			pp.Rules = append(pp.Rules, r)
		}
		out = append(out, pp)
	}
	return out
}

func protocol(p policy.Protocol) npds.Protocol {
	switch p {
	case policy.ProtocolTCP:
		return npds.Protocol_TCP
	case policy.ProtocolUDP:
		return npds.Protocol_UDP
	case policy.ProtocolSCTP:
		return npds.Protocol_SCTP
	}
	return npds.Protocol_ANY
}

// Hosts builds the identity table the in-Envoy filters use to find a
// peer's identity: every endpoint address with its endpoint's identity and
// every CIDR identity's prefix.
func Hosts(eps map[netip.Addr]policy.NumericIdentity, cidrs []*policy.Identity) []*npds.NetworkPolicyHosts {
	by := map[uint32][]string{}
	for ip, id := range eps {
		by[uint32(id)] = append(by[uint32(id)], ip.String())
	}
	for _, c := range cidrs {
		if c.Prefix.IsValid() {
			by[uint32(c.ID)] = append(by[uint32(c.ID)], c.Prefix.String())
		}
	}
	out := make([]*npds.NetworkPolicyHosts, 0, len(by))
	for id, addrs := range by {
		sort.Strings(addrs)
		out = append(out, &npds.NetworkPolicyHosts{Identity: id, HostAddresses: addrs})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Identity < out[j].Identity })
	return out
}

// Workload is an endpoint known to the agent: a local one (its policy is
// enforced here) or a remote one (only its addresses and identity matter).
type Workload struct {
	Name   string
	ID     uint64
	IPs    []netip.Addr
	Remote bool
}

// Resources translates a policy snapshot into the policy resources: one
// NetworkPolicy per local workload and the identity table of every
// workload address and CIDR identity.
func Resources(snap *policy.Snapshot, ws []Workload) ([]*npds.NetworkPolicy, []*npds.NetworkPolicyHosts) {
	return (*TranslationCache)(nil).Resources(snap, ws)
}

// TranslationCache keeps each local endpoint's translated NetworkPolicy
// while the snapshots hand out the same *policy.EndpointPolicy (they do
// until something that affects the endpoint changes) and its name and
// addresses are the same, so a publish translates only the endpoints that
// changed; and it keeps the identity table while no workload's address or
// identity and no CIDR identity changed, so a policy change that moves no
// address hands out the same table (the xDS server then sees the same
// messages and compares nothing). The messages it returns, and the
// slices holding them, are shared: never modified. The zero value is ready; a nil cache translates
// everything. Not safe for concurrent use.
type TranslationCache struct {
	// Secrets resolves headerMatches secrets (nil: none resolve). A
	// changed secret is seen after Invalidate.
	Secrets SecretValues

	m   map[uint64]*cachedPolicy
	gen uint64 // the current Resources call; entries not seen in it are gone
	// sorted is the last call's policies in name order (returned, so
	// replaced, never modified); each entry's idx is its place there.
	sorted []*npds.NetworkPolicy

	hosts []*npds.NetworkPolicyHosts
	hkeys []hostKey // what hosts was built from, in the workloads' order
	cidrs []hostKey // and the CIDR identities (prefix, identity)

	secretErrs []error // the last call's, from every local workload's policy
	secretRefs int     // headerMatches secrets the last call's policies reference
}

// Invalidate drops every cached translation: the next Resources
// translates each policy again (after a secret changed).
func (c *TranslationCache) Invalidate() {
	c.m, c.sorted = nil, nil
}

// SecretErrors are the headerMatches secrets the last Resources call could
// not resolve (each error names its secret; the rules use their fallback
// value, or never match).
func (c *TranslationCache) SecretErrors() []error { return c.secretErrs }

// UsesSecrets reports whether a policy of the last Resources call
// references a headerMatches secret (a changed secret needs Invalidate).
func (c *TranslationCache) UsesSecrets() bool { return c.secretRefs > 0 }

type cachedPolicy struct {
	pol  *policy.EndpointPolicy
	name string
	ips  []netip.Addr
	np   *npds.NetworkPolicy
	use  secretUse // its headerMatches secrets
	gen  uint64
	idx  int // np's place in sorted; -1: not there
}

// hostKey is one identity-table input: a workload (id, its addresses) or
// a CIDR identity (prefix), and the identity.
type hostKey struct {
	id       uint64
	identity policy.NumericIdentity
	ips      []netip.Addr
	prefix   netip.Prefix
}

// Resources is Resources through the cache.
func (c *TranslationCache) Resources(snap *policy.Snapshot, ws []Workload) ([]*npds.NetworkPolicy, []*npds.NetworkPolicyHosts) {
	if c != nil {
		c.gen++
		if c.m == nil {
			c.m = map[uint64]*cachedPolicy{}
		}
		c.secretErrs, c.secretRefs = nil, 0
	}
	// The sorted policies of the last call are kept (c.sorted): when each
	// local workload is one of theirs under the same name, the result is
	// that slice with the retranslated policies replaced in place, not
	// 10,000 policies sorted again. Any other change (a workload added,
	// removed or renamed) sorts the whole set.
	inPlace := c != nil && c.sorted != nil
	type replacement struct {
		idx int
		np  *npds.NetworkPolicy
	}
	var repl []replacement
	translate := func(w Workload, ep *policy.EndpointPolicy) *npds.NetworkPolicy {
		if c == nil {
			return NetworkPolicy(EndpointInfo{Name: w.Name, ID: w.ID, IPs: w.IPs}, ep)
		}
		cp, ok := c.m[w.ID]
		if ok && cp.gen == c.gen {
			inPlace = false // an ID seen twice in this call
		}
		if ok && cp.pol == ep && cp.name == w.Name && slices.Equal(cp.ips, w.IPs) {
			cp.gen = c.gen
			if cp.idx < 0 {
				inPlace = false
			}
			c.secretErrs, c.secretRefs = append(c.secretErrs, cp.use.errs...), c.secretRefs+cp.use.refs
			return cp.np
		}
		np, use := networkPolicy(EndpointInfo{Name: w.Name, ID: w.ID, IPs: w.IPs}, ep, c.Secrets)
		c.secretErrs, c.secretRefs = append(c.secretErrs, use.errs...), c.secretRefs+use.refs
		idx := -1
		if ok && cp.name == w.Name && cp.idx >= 0 {
			idx = cp.idx // same name: same place in the sorted set
			repl = append(repl, replacement{idx, np})
		} else {
			inPlace = false
		}
		c.m[w.ID] = &cachedPolicy{pol: ep, name: w.Name, ips: slices.Clone(w.IPs), np: np, use: use, gen: c.gen, idx: idx}
		return np
	}
	var ps []*npds.NetworkPolicy
	// The identity table is rebuilt only when an input differs from the
	// last call's, compared in order (the workloads come in a stable order).
	same := c != nil && c.hosts != nil
	k := 0
	for _, w := range ws {
		ep, ok := snap.Endpoint(w.ID)
		if !ok {
			continue
		}
		if same {
			same = k < len(c.hkeys) && c.hkeys[k].id == w.ID && c.hkeys[k].identity == ep.Identity && slices.Equal(c.hkeys[k].ips, w.IPs)
		}
		k++
		if !w.Remote {
			ps = append(ps, translate(w, ep))
		}
	}
	// Every local workload has a distinct entry (IDs are unique) at a
	// distinct place of the last sorted set: with as many of them as
	// places, they fill it.
	if inPlace && len(ps) == len(c.sorted) {
		if len(repl) > 0 {
			next := slices.Clone(c.sorted) // a returned slice is never modified
			for _, r := range repl {
				next[r.idx] = r.np
			}
			c.sorted = next
		}
		ps = c.sorted
	} else {
		slices.SortFunc(ps, func(a, b *npds.NetworkPolicy) int { return strings.Compare(a.Name, b.Name) })
		if c != nil {
			for id, cp := range c.m {
				if cp.gen != c.gen {
					delete(c.m, id)
					continue
				}
				cp.idx = -1
			}
			for i, np := range ps {
				c.m[np.EndpointId].idx = i
			}
			c.sorted = ps
		}
	}
	cidrs := snap.CIDRIdentities()
	if same {
		same = k == len(c.hkeys) && slices.EqualFunc(cidrs, c.cidrs, func(a *policy.Identity, b hostKey) bool {
			return a.Prefix == b.prefix && a.ID == b.identity
		})
	}
	if same {
		return ps, c.hosts
	}
	hostIPs := map[netip.Addr]policy.NumericIdentity{}
	var keys []hostKey
	if c != nil {
		keys = make([]hostKey, 0, k)
	}
	for _, w := range ws {
		ep, ok := snap.Endpoint(w.ID)
		if !ok {
			continue
		}
		for _, a := range w.IPs {
			hostIPs[a] = ep.Identity
		}
		if c != nil {
			keys = append(keys, hostKey{id: w.ID, identity: ep.Identity, ips: slices.Clone(w.IPs)})
		}
	}
	hosts := Hosts(hostIPs, cidrs)
	if c != nil {
		c.hosts, c.hkeys, c.cidrs = hosts, keys, make([]hostKey, len(cidrs))
		for i, ci := range cidrs {
			c.cidrs[i] = hostKey{identity: ci.ID, prefix: ci.Prefix}
		}
	}
	return ps, hosts
}

// WithFQDN returns the identity table hosts (built by Hosts or Resources)
// with the addresses the DNS proxy learnt for toFQDNs selectors added: fqdn
// maps each learnt prefix to its FQDN identity (the ipcache's FQDN claims).
// An address the table already has (an endpoint's, or a CIDR identity's
// prefix) keeps its identity: those outrank FQDN claims, as in the ipcache
// (agent/ipcache), and the in-Envoy table refuses an address claimed twice.
// hosts is not modified.
func WithFQDN(hosts []*npds.NetworkPolicyHosts, fqdn map[netip.Prefix]uint32) []*npds.NetworkPolicyHosts {
	if len(fqdn) == 0 {
		return hosts
	}
	taken := map[netip.Prefix]bool{}
	by := map[uint32][]string{}
	for _, h := range hosts {
		for _, a := range h.GetHostAddresses() {
			if ip, err := netip.ParseAddr(a); err == nil {
				taken[netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen())] = true
			} else if p, err := netip.ParsePrefix(a); err == nil {
				taken[p.Masked()] = true
			}
		}
		by[h.GetIdentity()] = append(by[h.GetIdentity()], h.GetHostAddresses()...)
	}
	added := false
	for p, id := range fqdn {
		p = p.Masked()
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if !p.IsValid() || taken[p] {
			continue
		}
		by[id] = append(by[id], p.String())
		added = true
	}
	if !added {
		return hosts
	}
	out := make([]*npds.NetworkPolicyHosts, 0, len(by))
	for id, addrs := range by {
		sort.Strings(addrs)
		out = append(out, &npds.NetworkPolicyHosts{Identity: id, HostAddresses: addrs})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Identity < out[j].Identity })
	return out
}
