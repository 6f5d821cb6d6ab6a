package policy

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/wardproxy/ward/policy/l7"
)

type entryKey struct {
	remote        NumericIdentity
	proto         Protocol
	port, endPort uint16
}

type l7Key struct {
	proto         Protocol
	port, endPort uint16
}

// dirBuilder accumulates one direction of one subject identity.
type dirBuilder struct {
	enforced   bool
	enforcedBy []*Origin
	allow      map[entryKey]*L4Entry
	deny       map[entryKey]*L4Entry
	l7         map[l7Key]*L7Port
	l7sel      map[l7Key]map[string]*L7Selection
	errors     []string
}

// resolveIdentity computes the policy of subject identity id from the
// rules that select it (in policy order).
func (r *Repository) resolveIdentity(id NumericIdentity, rules []*compiledRule, named map[NumericIdentity]map[string][]NamedPort) *identityPolicy {
	ip := &identityPolicy{uses: map[string]bool{}}
	for di, d := range []Direction{Ingress, Egress} {
		b := &dirBuilder{
			allow: map[entryKey]*L4Entry{}, deny: map[entryKey]*L4Entry{},
			l7: map[l7Key]*L7Port{}, l7sel: map[l7Key]map[string]*L7Selection{},
		}
		switch r.cfg.Mode {
		case ModeAlways:
			b.enforced = true
		case ModeNever:
			ip.dirs[di] = &DirectionPolicy{}
			continue
		}
		var req *labelSelector
		for _, cr := range rules {
			if cr.defaultDeny[di] {
				b.enforced = true
				b.enforcedBy = append(b.enforcedBy, cr.origin)
			}
			for _, rq := range cr.requires[di] {
				if req == nil {
					req = rq
				} else {
					req = req.and(rq)
				}
			}
		}
		// Named ports: ingress resolves against the subject's own
		// endpoints, egress against every endpoint.
		np := named[IdentityAny]
		if d == Ingress {
			np = named[id]
		}
		for _, cr := range rules {
			for _, s := range cr.sections[di] {
				r.addSection(b, ip, s, req, np)
			}
		}
		ip.dirs[di] = b.finish()
	}
	return ip
}

func (r *Repository) addSection(b *dirBuilder, ip *identityPolicy, s *section, req *labelSelector, np map[string][]NamedPort) {
	peers := s.peers
	if s.allPeers {
		if s.rules == nil {
			// An empty rule ({}, or only fromRequires) allows nothing.
			return
		}
		peers = []peer{entityPeer{EntityAll}}
	}
	if req != nil && !s.deny {
		rp := make([]peer, len(peers))
		for i, p := range peers {
			rp[i] = andPeer{p: p, req: req}
		}
		peers = rp
	}
	rules := s.rules
	if rules == nil {
		rules = []portRule{{ports: []portSpec{{proto: ProtocolAny}}}}
	}
	for _, p := range peers {
		sel := r.selectionFor(p)
		ip.uses[p.key()] = true
		for _, pr := range rules {
			if !sel.wildcard && len(sel.ids) == 0 && (pr.kind == l7.KindNone || s.deny) {
				continue // nothing selected; L7 ports are still set up
			}
			for _, ps := range pr.ports {
				for _, pp := range expandPort(ps, np, ip) {
					r.addEntries(b, s, sel, pr, pp)
				}
			}
		}
	}
}

func expandPort(ps portSpec, np map[string][]NamedPort, ip *identityPolicy) []portSpec {
	if ps.name == "" {
		return []portSpec{ps}
	}
	ip.namedPorts = true
	var out []portSpec
	for _, n := range np[ps.name] {
		if ps.proto != ProtocolAny && n.Protocol != ProtocolAny && n.Protocol != ps.proto {
			continue
		}
		proto := ps.proto
		if proto == ProtocolAny {
			proto = n.Protocol
		}
		out = append(out, portSpec{proto: proto, port: n.Port, endPort: n.Port})
	}
	return out
}

func (r *Repository) addEntries(b *dirBuilder, s *section, sel *selection, pr portRule, ps portSpec) {
	redirect := pr.kind != l7.KindNone && !s.deny
	add := func(remote NumericIdentity) {
		k := entryKey{remote: remote, proto: ps.proto, port: ps.port, endPort: ps.endPort}
		m := b.allow
		if s.deny {
			m = b.deny
		}
		e, ok := m[k]
		if !ok {
			m[k] = &L4Entry{Remote: remote, Protocol: ps.proto, Port: ps.port, EndPort: ps.endPort, Redirect: redirect, Origin: s.origin}
			return
		}
		if !redirect && e.Redirect {
			// A plain allow on the same key makes the L7 rules moot.
			e.Redirect = false
			e.Origin = s.origin
		}
	}
	if sel.wildcard {
		add(IdentityAny)
	} else {
		for _, id := range sel.ids {
			add(id)
		}
	}
	if !redirect {
		return
	}
	lk := l7Key{proto: ps.proto, port: ps.port, endPort: ps.endPort}
	lp, ok := b.l7[lk]
	if !ok {
		lp = &L7Port{Protocol: ps.proto, Port: ps.port, EndPort: ps.endPort, Kind: pr.kind}
		if pr.kind == l7.KindGeneric {
			lp.L7Proto = pr.l7.L7Proto
		}
		b.l7[lk] = lp
		b.l7sel[lk] = map[string]*L7Selection{}
	}
	if lp.Kind == l7.KindGeneric && pr.kind == l7.KindGeneric && lp.L7Proto != pr.l7.L7Proto {
		b.errors = append(b.errors, fmt.Sprintf("%s/%d: l7proto %s rules of %s conflict with l7proto %s rules on the same port; skipped",
			ps.proto, ps.port, pr.l7.L7Proto, s.origin, lp.L7Proto))
		return
	}
	if lp.Kind != pr.kind {
		b.errors = append(b.errors, fmt.Sprintf("%s/%d: %s rules of %s conflict with %s rules on the same port; skipped",
			ps.proto, ps.port, pr.kind, s.origin, lp.Kind))
		return
	}
	key := sel.p.key() + "|" + strings.Join(pr.serverNames, ",") + "|" + tlsKey(pr.termTLS) + "|" + tlsKey(pr.origTLS)
	ls, ok := b.l7sel[lk][key]
	if !ok {
		ls = &L7Selection{Wildcard: sel.wildcard, Remotes: sel.ids,
			ServerNames: pr.serverNames, TerminatingTLS: pr.termTLS, OriginatingTLS: pr.origTLS}
		b.l7sel[lk][key] = ls
		lp.Selections = append(lp.Selections, ls)
	}
	if !slices.Contains(ls.Origins, s.origin) {
		ls.Origins = append(ls.Origins, s.origin)
	}
	if pr.l7.Empty() {
		ls.AllowAll = true
		return
	}
	ls.Rules.HTTP = append(ls.Rules.HTTP, pr.l7.HTTP...)
	ls.Rules.Kafka = append(ls.Rules.Kafka, pr.l7.Kafka...)
	ls.Rules.DNS = append(ls.Rules.DNS, pr.l7.DNS...)
	ls.Rules.L7Proto = pr.l7.L7Proto
	ls.Rules.L7 = append(ls.Rules.L7, pr.l7.L7...)
}

func tlsKey(t *TLSContext) string {
	if t == nil || t.Secret == nil {
		return ""
	}
	return t.Secret.Namespace + "/" + t.Secret.Name + "/" + t.TrustedCA + "/" + t.Certificate + "/" + t.PrivateKey
}

func sortEntries(es []L4Entry) {
	sort.Slice(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if a.Remote != b.Remote {
			return a.Remote < b.Remote
		}
		if a.Protocol != b.Protocol {
			return a.Protocol < b.Protocol
		}
		if a.Port != b.Port {
			return a.Port < b.Port
		}
		return a.EndPort < b.EndPort
	})
}

// finish normalizes the builder into a DirectionPolicy (see its doc).
func (b *dirBuilder) finish() *DirectionPolicy {
	d := &DirectionPolicy{Enforced: b.enforced, EnforcedBy: b.enforcedBy, Errors: b.errors}
	for _, e := range b.deny {
		d.Deny = append(d.Deny, *e)
	}
	denyBy := map[NumericIdentity][]L4Entry{}
	for _, e := range d.Deny {
		denyBy[e.Remote] = append(denyBy[e.Remote], e)
	}
	derived := map[entryKey]bool{}
	for k := range b.deny {
		derived[k] = true
	}
	plainBy := map[NumericIdentity][]L4Entry{}
	for _, e := range b.allow {
		if !e.Redirect {
			plainBy[e.Remote] = append(plainBy[e.Remote], *e)
		}
	}
	for _, e := range b.allow {
		var denies []L4Entry
		if e.Remote == IdentityAny {
			denies = d.Deny
		} else {
			denies = append(slices.Clone(denyBy[IdentityAny]), denyBy[e.Remote]...)
		}
		covered := false
		for _, dn := range denies {
			if dn.coversEntry(*e) {
				covered = true
				break
			}
			if x, ok := dn.intersect(*e); ok {
				k := entryKey{x.Remote, x.Protocol, x.Port, x.EndPort}
				if !derived[k] {
					derived[k] = true
					x.Redirect = false
					d.Deny = append(d.Deny, x)
				}
			}
		}
		if covered {
			continue
		}
		d.Allow = append(d.Allow, *e)
		if !e.Redirect {
			continue
		}
		// A plain allow covering this redirect makes its L7 moot.
		for _, p := range append(slices.Clone(plainBy[IdentityAny]), plainBy[e.Remote]...) {
			if !p.coversEntry(*e) {
				continue
			}
			lk := l7Key{e.Protocol, e.Port, e.EndPort}
			lp := b.l7[lk]
			if lp == nil {
				break
			}
			ls := &L7Selection{AllowAll: true, Origins: []*Origin{p.Origin}}
			if e.Remote == IdentityAny {
				ls.Wildcard = true
			} else {
				ls.Remotes = []NumericIdentity{e.Remote}
			}
			lp.Selections = append(lp.Selections, ls)
			break
		}
	}
	sortEntries(d.Allow)
	sortEntries(d.Deny)
	for _, lp := range b.l7 {
		d.Proxy = append(d.Proxy, lp)
	}
	sort.Slice(d.Proxy, func(i, j int) bool {
		a, c := d.Proxy[i], d.Proxy[j]
		if a.Protocol != c.Protocol {
			return a.Protocol < c.Protocol
		}
		return a.Port < c.Port
	})
	return d
}
