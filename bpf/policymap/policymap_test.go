package policymap

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/policy"
)

func TestEntries(t *testing.T) {
	http := &policy.L7Port{Protocol: policy.ProtocolTCP, Port: 80}
	dns := &policy.L7Port{Protocol: policy.ProtocolUDP, Port: 53}
	sctp := &policy.L7Port{Protocol: policy.ProtocolSCTP, Port: 80}
	d := &policy.DirectionPolicy{
		Enforced: true,
		Allow: []policy.L4Entry{
			{Remote: 1002, Protocol: policy.ProtocolTCP, Port: 80, Redirect: true},
			{Remote: 1003, Protocol: policy.ProtocolTCP, Port: 8000, EndPort: 8002},
			{Remote: 0, Protocol: policy.ProtocolUDP, Port: 53, Redirect: true},  // no proxy: fails closed
			{Remote: 5, Protocol: policy.ProtocolSCTP, Port: 80, Redirect: true}, // proxies take TCP/UDP only
			{Remote: 0, Protocol: policy.ProtocolICMP, Port: 8, EndPort: 8},
			{Remote: 7, Protocol: policy.ProtocolICMPv6},
		},
		Deny: []policy.L4Entry{
			{Remote: 2, Protocol: policy.ProtocolAny},
			{Remote: 0, Protocol: policy.ProtocolICMPv6, Port: 128, EndPort: 128},
		},
		Proxy: []*policy.L7Port{http, dns, sctp},
	}
	got, err := Entries(policy.Ingress, d, func(dir policy.Direction, p *policy.L7Port) uint16 {
		if p == http || p == sctp {
			return 15001
		}
		return 0
	})
	if err != nil {
		t.Fatal(err)
	}
	k := func(id uint32, port uint16, wild uint8, proto uint8) redirect.PolicyKey {
		return redirect.PolicyKey{Direction: redirect.Ingress, Identity: id, Port: port, PortWild: wild, Proto: proto}
	}
	want := []redirect.PolicyEntry{
		{PolicyKey: k(2, 0, 0, 0), Verdict: redirect.Deny},
		{PolicyKey: k(0, 128, 0, 58), Verdict: redirect.Deny},
		{PolicyKey: k(1002, 80, 0, 6), Verdict: redirect.Redirect, ProxyPort: 15001},
		{PolicyKey: k(1003, 8000, 1, 6), Verdict: redirect.Allow}, // 8000-8001
		{PolicyKey: k(1003, 8002, 0, 6), Verdict: redirect.Allow},
		{PolicyKey: k(0, 53, 0, 17), Verdict: redirect.Deny},
		{PolicyKey: k(5, 80, 0, 132), Verdict: redirect.Deny},
		{PolicyKey: k(0, 8, 0, 1), Verdict: redirect.Allow},
		{PolicyKey: k(7, 0, 0, 58), Verdict: redirect.Allow},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Entries mismatch (-want +got):\n%s", diff)
	}
	if e, err := Entries(policy.Egress, nil, nil); e != nil || err != nil {
		t.Errorf("nil direction: %v, %v", e, err)
	}
}

// TestWideRanges: any range, 1-65535 included, is a handful of masked
// entries (it used to fail above 4096 ports, and the agent then skipped
// the endpoint's whole write: an egressDeny on 1024-65535 was never
// enforced).
func TestWideRanges(t *testing.T) {
	d := &policy.DirectionPolicy{
		Enforced: true,
		Allow:    []policy.L4Entry{{Protocol: policy.ProtocolTCP, Port: 1, EndPort: 65535}},
		Deny:     []policy.L4Entry{{Remote: 9, Protocol: policy.ProtocolTCP, Port: 1024, EndPort: 65535}},
	}
	got, err := Entries(policy.Egress, d, nil)
	if err != nil {
		t.Fatal(err)
	}
	covered := map[uint32]map[uint32]redirect.Verdict{} // identity -> port -> verdict
	for _, e := range got {
		if covered[e.Identity] == nil {
			covered[e.Identity] = map[uint32]redirect.Verdict{}
		}
		for p := uint32(e.Port); p < uint32(e.Port)+1<<e.PortWild; p++ {
			if _, dup := covered[e.Identity][p]; dup {
				t.Fatalf("port %d covered twice", p)
			}
			covered[e.Identity][p] = e.Verdict
		}
	}
	if len(got) > 16+6 {
		t.Errorf("%d entries; want at most 22", len(got))
	}
	if n := len(covered[0]); n != 65535 || covered[0][0] != 0 {
		t.Errorf("allow covers %d ports (port 0: %v); want 1-65535", n, covered[0][0])
	}
	if n := len(covered[9]); n != 65535-1023 || covered[9][1023] != 0 || covered[9][1024] != redirect.Deny || covered[9][65535] != redirect.Deny {
		t.Errorf("deny covers %d ports; want 1024-65535", n)
	}
	// Only input the model never produces is an error (the agent then
	// locks the endpoint down).
	if _, err := Entries(policy.Egress, &policy.DirectionPolicy{Allow: []policy.L4Entry{{Protocol: policy.ProtocolAny, Port: 80}}}, nil); err == nil {
		t.Error("a port without a protocol was accepted")
	}
}

// TestNotDefaultDenyWithDenyOrRedirect: a direction that is not default
// deny but has deny or redirect entries (enableDefaultDeny: false) is
// looked up by the datapath, with an allow-all entry below them; one with
// allow entries only is not looked up at all.
func TestNotDefaultDenyWithDenyOrRedirect(t *testing.T) {
	deny := &policy.DirectionPolicy{Deny: []policy.L4Entry{{Remote: 5000, Protocol: policy.ProtocolTCP, Port: 80}}}
	allowOnly := &policy.DirectionPolicy{Allow: []policy.L4Entry{{Remote: 5000, Protocol: policy.ProtocolTCP, Port: 80}}}
	if !Enforce(deny) || Enforce(allowOnly) || Enforce(nil) {
		t.Fatalf("Enforce: deny %v, allow-only %v, nil %v", Enforce(deny), Enforce(allowOnly), Enforce(nil))
	}
	es, err := Entries(policy.Ingress, deny, nil)
	if err != nil {
		t.Fatal(err)
	}
	var allowAll, denied bool
	for _, e := range es {
		allowAll = allowAll || (e.Verdict == redirect.Allow && e.Identity == 0 && e.Proto == 0 && e.Port == 0)
		denied = denied || (e.Verdict == redirect.Deny && e.Identity == 5000)
	}
	if !allowAll || !denied {
		t.Errorf("entries %+v: want the deny entry and an allow-all entry", es)
	}
	es, _ = Entries(policy.Ingress, &policy.DirectionPolicy{Enforced: true, Deny: deny.Deny}, nil)
	for _, e := range es {
		if e.Verdict == redirect.Allow {
			t.Errorf("default-deny direction got an allow entry %+v", e)
		}
	}
}
