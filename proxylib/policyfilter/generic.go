package policyfilter

import (
	"fmt"

	"github.com/wardproxy/ward/filters/memcache"
	"github.com/wardproxy/ward/filters/r2d2"
	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/proxylib"
	"github.com/wardproxy/ward/proxylib/npdsclient"
)

// genericL7 is what Compile keeps for a generic L7 rule (`l7proto` with
// its key/value rules): the protocol, its rules and their compiled matcher
// (several rules selecting one remote are merged). rules nil: every
// request of the protocol is allowed.
type genericL7 struct {
	proto string
	rules []l7.GenericRule
	mc    *memcache.Matcher
	rd    *r2d2.Matcher
}

func compileGeneric(rules *l7.Rules) (*genericL7, error) {
	g := &genericL7{proto: rules.L7Proto, rules: rules.L7}
	var err error
	switch rules.L7Proto {
	case "memcache":
		g.mc, err = memcache.Compile(rules.L7)
	case "r2d2":
		g.rd, err = r2d2.Compile(rules.L7)
	default:
		return nil, fmt.Errorf("l7proto %q: no parser in this module", rules.L7Proto)
	}
	if err != nil {
		return nil, fmt.Errorf("%s rules: %w", rules.L7Proto, err)
	}
	return g, nil
}

// portProto is the generic protocol of an endpoint's port in a direction
// ("" when its rules are not generic): every rule of a generic port
// carries its protocol, allow-all ones included.
func portProto(ep *npdsclient.Endpoint, ingress bool, port uint16) string {
	if ep == nil {
		return ""
	}
	ports := ep.Egress
	if ingress {
		ports = ep.Ingress
	}
	for _, p := range ports {
		end := max(p.EndPort, p.Port)
		if p.Port != 0 && (port < p.Port || port > end) {
			continue
		}
		for _, r := range p.Rules {
			if g, ok := r.L7.(*genericL7); ok {
				return g.proto
			}
		}
	}
	return ""
}

// genericRules finds the generic rules of one connection's endpoint over
// the current policy State: all (every request allowed) or the rules that
// select the remote.
type genericRules struct{ connRules }

func (r genericRules) lookup(ingress bool, port uint16, remote uint32) (all bool, rules []*genericL7, ok bool) {
	_, ep, found := r.endpoint()
	if !found {
		return false, nil, false
	}
	return lookupGeneric(ep, ingress, port, remote)
}

func lookupGeneric(ep *npdsclient.Endpoint, ingress bool, port uint16, remote uint32) (all bool, rules []*genericL7, ok bool) {
	v, rs := ep.Lookup(ingress, port, remote, nil)
	switch v {
	case npdsclient.AllowAll:
		return true, nil, true
	case npdsclient.CheckL7:
	default:
		return false, nil, false
	}
	for _, rl := range rs {
		if g, ok := rl.L7.(*genericL7); ok {
			if g.rules == nil {
				return true, nil, true
			}
			rules = append(rules, g)
		}
	}
	return false, rules, len(rules) > 0
}

// chained is, on an egress connection to a local endpoint, that
// endpoint's ingress rules for the client (connRules: chained ingress);
// chain false when they do not apply.
func (r genericRules) chained(ingress bool, port uint16) (all bool, rules []*genericL7, ok, chain bool) {
	if ingress {
		return false, nil, false, false
	}
	dst, src, chain := r.chain(r.c.client.State())
	if !chain {
		return false, nil, false, false
	}
	all, rules, ok = lookupGeneric(dst, true, port, src)
	return all, rules, ok, true
}

// srcAudit reports whether the connection's own endpoint is in audit mode.
func (r genericRules) srcAudit() bool {
	_, ep, ok := r.endpoint()
	return ok && ep.Audit
}

// union is the rules of gs together.
func union(gs []*genericL7) []l7.GenericRule {
	var all []l7.GenericRule
	for _, g := range gs {
		all = append(all, g.rules...)
	}
	return all
}

// genericMatcher is a generic parser's matcher (nil allows everything).
type genericMatcher[M any] interface {
	*M
	And(*M) *M
}

// rulesFor is a generic parser's RuleSource answer: the matcher of the
// connection's rules for remote (matcher: the parser's, from lookup's
// result) and, on a chained egress connection (connRules), the
// destination's ingress matcher too: enforced always, the client's egress
// rules unless it is in audit mode.
func rulesFor[M any, PM genericMatcher[M]](r genericRules, ingress bool, port uint16, remote uint32, matcher func(all bool, gs []*genericL7, ok bool) (PM, bool)) (PM, bool) {
	m, ok := matcher(r.lookup(ingress, port, remote))
	all, gs, iok, chain := r.chained(ingress, port)
	if !chain {
		return m, ok
	}
	im, iok := matcher(all, gs, iok)
	switch {
	case !iok:
		return nil, false
	case r.srcAudit():
		return im, true
	case !ok:
		return nil, false
	}
	return m.And(im), true
}

type memcacheRules struct{ genericRules }

func (r memcacheRules) Rules(ingress bool, port uint16, remote uint32) (*memcache.Matcher, bool) {
	return rulesFor(r.genericRules, ingress, port, remote, memcacheMatcher)
}

func memcacheMatcher(all bool, gs []*genericL7, ok bool) (*memcache.Matcher, bool) {
	switch {
	case !ok:
		return nil, false
	case all:
		return nil, true
	case len(gs) == 1 && gs[0].mc != nil:
		return gs[0].mc, true
	}
	m, err := memcache.Compile(union(gs)) // each part compiled: the union cannot fail
	return m, err == nil && m != nil
}

type r2d2Rules struct{ genericRules }

func (r r2d2Rules) Rules(ingress bool, port uint16, remote uint32) (*r2d2.Matcher, bool) {
	return rulesFor(r.genericRules, ingress, port, remote, r2d2Matcher)
}

func r2d2Matcher(all bool, gs []*genericL7, ok bool) (*r2d2.Matcher, bool) {
	switch {
	case !ok:
		return nil, false
	case all:
		return nil, true
	case len(gs) == 1 && gs[0].rd != nil:
		return gs[0].rd, true
	}
	m, err := r2d2.Compile(union(gs))
	return m, err == nil && m != nil
}

// newGenericStream is the stream of a connection whose port is a generic
// protocol's (nil when this module has no parser for it).
func (f *streamFilter) newGenericStream(proto string, rs connRules, info *proxylib.ConnInfo) *proxylib.Stream {
	var sink flow.Sink
	if f.c.flows != nil {
		sink = f.c.flows
	}
	var fac proxylib.ParserFactory
	switch proto {
	case "memcache":
		fac = memcache.NewParserFactory(memcacheRules{genericRules{rs}}, sink)
	case "r2d2":
		fac = r2d2.NewParserFactory(r2d2Rules{genericRules{rs}}, sink)
	default:
		return nil
	}
	s := proxylib.NewStream(fac, &f.out, info)
	s.Budget = f.c.budget
	return s
}
