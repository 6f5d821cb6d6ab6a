package npdsclient

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/wardproxy/ward/xds/npds"
)

func httpRule(ids ...uint32) *npds.PortNetworkPolicyRule {
	return &npds.PortNetworkPolicyRule{RemoteIdentities: ids, L7: npds.HTTP()}
}

func compileMark(r *npds.PortNetworkPolicyRule) (any, error) {
	if rs, err := r.GetL7().Decode(); err == nil && rs.HTTP != nil {
		return "l7", nil
	}
	return nil, errors.New("unsupported")
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
	byName, byIP, err := compilePolicies(res, compileMark)
	if err != nil {
		t.Fatal(err)
	}
	ep := byName["ep"]
	if byIP[netip.MustParseAddr("10.0.0.1")] != ep {
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
		{"deny with l7", &npds.NetworkPolicy{EgressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, Rules: []*npds.PortNetworkPolicyRule{{Deny: true, L7: npds.HTTP()}}}}}, "egress[0].rules[0]: deny rules cannot carry L7"},
		{"compiler error", &npds.NetworkPolicy{IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, Rules: []*npds.PortNetworkPolicyRule{{L7: npds.Kafka()}}}}}, "ingress[0].rules[0]: unsupported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := compilePolicies(map[string]*npds.NetworkPolicy{"p": tc.p}, compileMark)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("compile = %v; want an error containing %q", err, tc.want)
			}
		})
	}
	_, _, err := compilePolicies(map[string]*npds.NetworkPolicy{
		"a": {EndpointIps: []string{"10.0.0.1"}}, "b": {EndpointIps: []string{"10.0.0.1"}},
	}, compileMark)
	if err == nil || !strings.Contains(err.Error(), "already belongs to a") {
		t.Errorf("duplicate IP: %v; want an error", err)
	}
}

func TestIdentityTable(t *testing.T) {
	exact, prefixes, err := compileHosts(map[string]*npds.NetworkPolicyHosts{
		"5":  {Identity: 5, HostAddresses: []string{"10.0.0.5", "10.0.1.0/24"}},
		"6":  {Identity: 6, HostAddresses: []string{"10.0.0.0/16", "10.0.0.6/32"}},
		"16": {Identity: 16777217, HostAddresses: []string{"0.0.0.0/0"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &State{hostsExact: exact, hostsPrefix: prefixes}
	for ip, want := range map[string]uint32{"10.0.0.5": 5, "10.0.0.6": 6, "10.0.1.9": 5, "10.0.7.7": 6, "8.8.8.8": 16777217, "::ffff:10.0.0.5": 5} {
		if got, ok := s.Identity(netip.MustParseAddr(ip)); !ok || got != want {
			t.Errorf("Identity(%s) = %d, %v; want %d", ip, got, ok, want)
		}
	}
	if _, _, err := compileHosts(map[string]*npds.NetworkPolicyHosts{"1": {Identity: 1, HostAddresses: []string{"nope"}}}); err == nil {
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
		compilePolicies(map[string]*npds.NetworkPolicy{"p": p}, compileMark)
		h := &npds.NetworkPolicyHosts{}
		if proto.Unmarshal(b, h) == nil {
			compileHosts(map[string]*npds.NetworkPolicyHosts{"h": h})
		}
	})
}
