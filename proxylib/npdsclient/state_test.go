package npdsclient

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/wardproxy/ward/xds/npds"
)

func httpRule(ids ...uint32) *npds.PortNetworkPolicyRule {
	return withHTTP(&npds.PortNetworkPolicyRule{RemoteIdentities: ids})
}

func compileMark(r *npds.PortNetworkPolicyRule) (any, error) {
	if _, ok := httpPaths(r); ok {
		return "l7", nil
	}
	return nil, errors.New("unsupported")
}

// compileAll applies res as a complete set to a new client.
func compileAll(res map[string]*npds.NetworkPolicy, hosts []*npds.NetworkPolicyHosts, compile Compiler) (*State, error) {
	c := New(Config{Compile: compile})
	ps := make([]*npds.NetworkPolicy, 0, len(res))
	for n, p := range res {
		p = proto.Clone(p).(*npds.NetworkPolicy)
		p.Name = n
		ps = append(ps, p)
	}
	err := c.Apply(context.Background(), ps, hosts)
	return c.State(), err
}

func TestLookup(t *testing.T) {
	res := map[string]*npds.NetworkPolicy{"ep": {
		Name: "ep", EndpointIps: []string{"10.0.0.1"},
		IngressPerPortPolicies: []*npds.PortNetworkPolicy{
			{Port: 80, Rules: []*npds.PortNetworkPolicyRule{httpRule(7), httpRule(8)}},
			{Port: 80, Rules: []*npds.PortNetworkPolicyRule{{RemoteIdentities: []uint32{9}}}},
			{Port: 8000, EndPort: 8080, Rules: []*npds.PortNetworkPolicyRule{{}}},
			{Port: 443, Rules: []*npds.PortNetworkPolicyRule{{RemoteIdentities: []uint32{7}, Deny: true}, httpRule(7)}},
		},
	}}
	st, err := compileAll(res, nil, compileMark)
	if err != nil {
		t.Fatal(err)
	}
	ep := st.byName["ep"]
	if e, _ := st.EndpointByIP(netip.MustParseAddr("10.0.0.1")); e != ep || ep == nil {
		t.Fatal("endpoint not indexed by IP")
	}
	for _, tc := range []struct {
		name    string
		ingress bool
		port    uint16
		remote  uint32
		want    Verdict
		rules   int
	}{
		{name: "l7 rule for 7", ingress: true, port: 80, remote: 7, want: CheckL7, rules: 1},
		{name: "l7 rule for 8", ingress: true, port: 80, remote: 8, want: CheckL7, rules: 1},
		{name: "l4 allow makes l7 moot", ingress: true, port: 80, remote: 9, want: AllowAll},
		{name: "no rule for 10", ingress: true, port: 80, remote: 10, want: NoPolicy},
		{name: "range, any remote", ingress: true, port: 8042, remote: 10, want: AllowAll},
		{name: "outside range", ingress: true, port: 8081, remote: 10, want: NoPolicy},
		{name: "deny wins", ingress: true, port: 443, remote: 7, want: Denied},
		{name: "egress empty", ingress: false, port: 80, remote: 7, want: NoPolicy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, rules := ep.Lookup(tc.ingress, tc.port, tc.remote, nil)
			if v != tc.want || len(rules) != tc.rules {
				t.Errorf("Lookup(%v, %d, %d) = %v, %d rules; want %v, %d", tc.ingress, tc.port, tc.remote, v, len(rules), tc.want, tc.rules)
			}
		})
	}
	var nilEP *Endpoint
	if v, _ := nilEP.Lookup(true, 80, 7, nil); v != NoPolicy {
		t.Errorf("nil endpoint: %v; want NoPolicy", v)
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    *npds.NetworkPolicy
		want string
	}{
		{"bad ip", &npds.NetworkPolicy{EndpointIps: []string{"x"}}, "endpoint_ips[0]"},
		{"bad range", &npds.NetworkPolicy{IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 90, EndPort: 80}}}, "ingress[0]: bad port range"},
		{"deny with l7", &npds.NetworkPolicy{EgressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, Rules: []*npds.PortNetworkPolicyRule{withHTTP(&npds.PortNetworkPolicyRule{Deny: true})}}}}, "egress[0].rules[0]: deny rules cannot carry L7"},
		{"compiler error", &npds.NetworkPolicy{IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, Rules: []*npds.PortNetworkPolicyRule{withOtherL7(&npds.PortNetworkPolicyRule{})}}}}, "ingress[0].rules[0]: unsupported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := compileAll(map[string]*npds.NetworkPolicy{"p": tc.p}, nil, compileMark)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("compile = %v; want an error containing %q", err, tc.want)
			}
		})
	}
	_, err := compileAll(map[string]*npds.NetworkPolicy{
		"a": {EndpointIps: []string{"10.0.0.1"}}, "b": {EndpointIps: []string{"10.0.0.1"}},
	}, nil, compileMark)
	if err == nil || !strings.Contains(err.Error(), "already belongs to a") {
		t.Errorf("duplicate IP: %v; want an error", err)
	}
}

func TestIdentityTable(t *testing.T) {
	s, err := compileAll(nil, []*npds.NetworkPolicyHosts{
		{Identity: 5, HostAddresses: []string{"10.0.0.5", "10.0.1.0/24"}},
		{Identity: 6, HostAddresses: []string{"10.0.0.0/16", "10.0.0.6/32"}},
		{Identity: 16777217, HostAddresses: []string{"0.0.0.0/0"}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for ip, want := range map[string]uint32{"10.0.0.5": 5, "10.0.0.6": 6, "10.0.1.9": 5, "10.0.7.7": 6, "8.8.8.8": 16777217, "::ffff:10.0.0.5": 5} {
		if got, ok := s.Identity(netip.MustParseAddr(ip)); !ok || got != want {
			t.Errorf("Identity(%s) = %d, %v; want %d", ip, got, ok, want)
		}
	}
	if _, err := compileAll(nil, []*npds.NetworkPolicyHosts{{Identity: 1, HostAddresses: []string{"nope"}}}, nil); err == nil {
		t.Error("bad address accepted")
	}
}

// FuzzCompile feeds arbitrary policy resources to the compiler: it returns
// a State or an error, never panics.
func FuzzCompile(f *testing.F) {
	f.Add([]byte{0x0a, 0x02, 0x65, 0x70})
	seed, _ := proto.Marshal(&npds.NetworkPolicy{Name: "ep", EndpointIps: []string{"10.0.0.1"}, IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, EndPort: 90, Rules: []*npds.PortNetworkPolicyRule{httpRule(1)}}}})
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		p := &npds.NetworkPolicy{}
		if err := proto.Unmarshal(b, p); err != nil {
			return
		}
		compileEndpoint("p", p, compileMark)
		h := &npds.NetworkPolicyHosts{}
		if proto.Unmarshal(b, h) == nil {
			compileHostsRes("h", h)
		}
	})
}

// TestDeltaRecompilesOnlyItsResources: a delta compiles the resources it
// carries and nothing else (the other endpoints keep their compiled
// values); addresses may move between endpoints within one delta; an
// endpoint claiming an address another one keeps is rejected alone.
func TestDeltaRecompilesOnlyItsResources(t *testing.T) {
	calls := 0
	c := New(Config{Compile: func(r *npds.PortNetworkPolicyRule) (any, error) { calls++; return compileMark(r) }})
	ep := func(name, ip string) update[*npds.NetworkPolicy] {
		return update[*npds.NetworkPolicy]{name: name, version: ip, msg: &npds.NetworkPolicy{Name: name, EndpointIps: []string{ip},
			IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, Rules: []*npds.PortNetworkPolicyRule{httpRule(7)}}}}}
	}
	if err := c.applyPolicies("v1", nil, []update[*npds.NetworkPolicy]{ep("a", "10.0.0.1"), ep("b", "10.0.0.2"), ep("c", "10.0.0.3")}); err != nil {
		t.Fatal(err)
	}
	before := c.State()
	calls = 0
	// a and b swap addresses.
	if err := c.applyPolicies("v2", nil, []update[*npds.NetworkPolicy]{ep("a", "10.0.0.2"), ep("b", "10.0.0.1")}); err != nil {
		t.Fatalf("swap: %v", err)
	}
	st := c.State()
	if calls != 2 {
		t.Errorf("compiler called %d times for a 2-resource delta; want 2", calls)
	}
	if st.byName["c"] != before.byName["c"] {
		t.Error("c was recompiled by a delta that does not carry it")
	}
	for ip, want := range map[string]string{"10.0.0.1": "b", "10.0.0.2": "a", "10.0.0.3": "c"} {
		if e, _ := st.EndpointByIP(netip.MustParseAddr(ip)); e == nil || e.Name != want {
			t.Errorf("after the swap %s = %v; want %s", ip, e, want)
		}
	}
	// d claims c's address: d alone is rejected, e in the same delta
	// applies.
	err := c.applyPolicies("v3", nil, []update[*npds.NetworkPolicy]{ep("d", "10.0.0.3"), ep("e", "10.0.0.5")})
	if err == nil || !strings.Contains(err.Error(), "policy d: endpoint_ips[0]: 10.0.0.3 already belongs to c") {
		t.Errorf("conflict: %v; want d rejected", err)
	}
	st = c.State()
	if _, ok := st.Endpoint("d"); ok {
		t.Error("rejected d is in force")
	}
	if _, ok := st.Endpoint("e"); !ok {
		t.Error("e, in the same delta as the rejected d, is not in force")
	}
	if got := c.Rejected(npds.NetworkPolicyType); len(got) != 1 || got["d"] == "" {
		t.Errorf("Rejected = %v; want d", got)
	}
	if got := c.heldVersions(npds.NetworkPolicyType); got["e"] != "10.0.0.5" || got["d"] != "" {
		t.Errorf("held versions = %v; want e at its version and no d", got)
	}
	// Removing c frees the address; d (resent by the server) applies.
	if err := c.applyPolicies("v4", []string{"c"}, []update[*npds.NetworkPolicy]{ep("d", "10.0.0.3")}); err != nil {
		t.Fatal(err)
	}
	if e, _ := c.State().EndpointByIP(netip.MustParseAddr("10.0.0.3")); e == nil || e.Name != "d" {
		t.Errorf("10.0.0.3 = %v; want d", e)
	}
	if got := c.Rejected(npds.NetworkPolicyType); len(got) != 0 {
		t.Errorf("Rejected = %v; want none", got)
	}
}

// TestHostsDelta: identities change one by one; an address claimed by two
// identities is rejected for the later claim only; an endpoint address
// wins over a single-address CIDR identity.
func TestHostsDelta(t *testing.T) {
	c := New(Config{})
	h := func(id uint32, addrs ...string) update[*npds.NetworkPolicyHosts] {
		m := &npds.NetworkPolicyHosts{Identity: id, HostAddresses: addrs}
		return update[*npds.NetworkPolicyHosts]{name: m.GetName(), msg: m}
	}
	if err := c.applyHosts("h1", nil, []update[*npds.NetworkPolicyHosts]{h(5, "10.0.0.5"), h(6, "10.0.0.6", "10.1.0.0/16"), h(16777217, "10.0.0.5/32")}); err != nil {
		t.Fatal(err)
	}
	if err := c.applyHosts("h2", nil, []update[*npds.NetworkPolicyHosts]{h(7, "10.0.0.6"), h(8, "10.1.2.0/24")}); err == nil || !strings.Contains(err.Error(), "hosts 7: 10.0.0.6 already belongs to identity 6") {
		t.Errorf("conflict: %v; want hosts 7 rejected", err)
	}
	if err := c.applyHosts("h3", []string{"6"}, nil); err != nil {
		t.Fatal(err)
	}
	st := c.State()
	for ip, want := range map[string]uint32{"10.0.0.5": 5, "10.1.2.3": 8} {
		if got, ok := st.Identity(netip.MustParseAddr(ip)); !ok || got != want {
			t.Errorf("Identity(%s) = %d, %v; want %d", ip, got, ok, want)
		}
	}
	for _, ip := range []string{"10.0.0.6", "10.1.0.1"} {
		if got, ok := st.Identity(netip.MustParseAddr(ip)); ok {
			t.Errorf("Identity(%s) = %d after its identity was removed; want none", ip, got)
		}
	}
}

// FuzzDeltas applies sequences of policy deltas over a few names and
// addresses (updates moving addresses, removals, conflicts) and checks
// after each that the indexes agree: every endpoint in force owns its
// addresses, every address points at an endpoint in force, and the
// versions held are exactly the endpoints in force.
func FuzzDeltas(f *testing.F) {
	f.Add([]byte{0x01, 0x13, 0x22, 0x31, 0x12, 0x81, 0x20})
	f.Add([]byte{0x03, 0x13, 0x02, 0x11, 0x8f, 0x30, 0x0c})
	ips := []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}
	f.Fuzz(func(t *testing.T, ops []byte) {
		c := New(Config{Compile: compileMark})
		for len(ops) > 0 {
			// One delta: up to 4 ops until a byte with the high bit set.
			var removed []string
			var ups []update[*npds.NetworkPolicy]
			seen := map[string]bool{}
			for n := 0; n < 4 && len(ops) > 0; n++ {
				op := ops[0]
				ops = ops[1:]
				name := string(rune('a' + op>>4&0x3))
				if seen[name] {
					continue
				}
				seen[name] = true
				if op&0x40 != 0 {
					removed = append(removed, name)
				} else {
					p := &npds.NetworkPolicy{Name: name}
					for i, ip := range ips {
						if op&(1<<i) != 0 {
							p.EndpointIps = append(p.EndpointIps, ip)
						}
					}
					ups = append(ups, update[*npds.NetworkPolicy]{name: name, version: fmt.Sprint(op), msg: p})
				}
				if op&0x80 != 0 {
					break
				}
			}
			c.applyPolicies("v", removed, ups) // rejections are expected
			st := c.State()
			for n, e := range st.byName {
				for _, ip := range e.IPs {
					if st.byIP[ip] != e {
						t.Fatalf("%s owns %s but byIP says %v", n, ip, st.byIP[ip])
					}
				}
			}
			for ip, e := range st.byIP {
				if st.byName[e.Name] != e {
					t.Fatalf("byIP[%s] = %s, not in force", ip, e.Name)
				}
			}
			held := c.heldVersions(npds.NetworkPolicyType)
			if len(held) != len(st.byName) {
				t.Fatalf("held %v; in force %d endpoints", held, len(st.byName))
			}
			for n := range held {
				if _, ok := st.byName[n]; !ok {
					t.Fatalf("held %s is not in force", n)
				}
			}
		}
	})
}
