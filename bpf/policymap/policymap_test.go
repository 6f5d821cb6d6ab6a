package policymap

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/policy"
	l7kind "github.com/wardproxy/ward/policy/l7"
)

func TestEntries(t *testing.T) {
	l7 := &policy.L7Port{Protocol: policy.ProtocolTCP, Port: 80, Kind: l7kind.KindHTTP}
	d := &policy.DirectionPolicy{
		Enforced: true,
		Allow: []policy.L4Entry{
			{Remote: 1002, Protocol: policy.ProtocolTCP, Port: 80, Redirect: true},
			{Remote: 1003, Protocol: policy.ProtocolTCP, Port: 8000, EndPort: 8002},
			{Remote: 0, Protocol: policy.ProtocolUDP, Port: 53, Redirect: true},  // no proxy: fails closed
			{Remote: 5, Protocol: policy.ProtocolSCTP, Port: 80, Redirect: true}, // proxies take TCP/UDP only
			{Remote: 0, Protocol: policy.ProtocolICMP, Port: 8},
		},
		Deny:  []policy.L4Entry{{Remote: 2, Protocol: policy.ProtocolAny}},
		Proxy: []*policy.L7Port{l7, {Protocol: policy.ProtocolUDP, Port: 53, Kind: l7kind.KindDNS}, {Protocol: policy.ProtocolSCTP, Port: 80, Kind: l7kind.KindHTTP}},
	}
	got, err := Entries(policy.Ingress, d, func(dir policy.Direction, p *policy.L7Port) uint16 {
		if p.Kind == l7kind.KindHTTP {
			return 15001
		}
		return 0
	})
	if err != nil {
		t.Fatal(err)
	}
	k := func(id uint32, port uint16, proto uint8) redirect.PolicyKey {
		return redirect.PolicyKey{Direction: redirect.Ingress, Identity: id, Port: port, Proto: proto}
	}
	want := []redirect.PolicyEntry{
		{PolicyKey: k(2, 0, 0), Verdict: redirect.Deny},
		{PolicyKey: k(1002, 80, 6), Verdict: redirect.Redirect, ProxyPort: 15001},
		{PolicyKey: k(1003, 8000, 6), Verdict: redirect.Allow},
		{PolicyKey: k(1003, 8001, 6), Verdict: redirect.Allow},
		{PolicyKey: k(1003, 8002, 6), Verdict: redirect.Allow},
		{PolicyKey: k(0, 53, 17), Verdict: redirect.Deny},
		{PolicyKey: k(5, 80, 132), Verdict: redirect.Deny},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Entries mismatch (-want +got):\n%s", diff)
	}
	if _, err := Entries(policy.Egress, &policy.DirectionPolicy{Allow: []policy.L4Entry{{Protocol: policy.ProtocolTCP, Port: 1, EndPort: 65535}}}, nil); err == nil {
		t.Error("a 65535-port range was expanded; want an error")
	}
	if e, err := Entries(policy.Egress, nil, nil); e != nil || err != nil {
		t.Errorf("nil direction: %v, %v", e, err)
	}
}
