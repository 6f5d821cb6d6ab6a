package redirect

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
)

const tcUnspec = 0xFFFFFFFF // TC_ACT_UNSPEC (TCX_NEXT) as the test run returns it

// TestHostFirewall runs host_in and host_out on packets to and from the
// node's address (ipcache identity host): nothing enforced passes them on
// untouched (TCX_NEXT, no conntrack); an enforced ingress policy allows
// its port and drops others, replies to host-initiated flows pass, audit
// mode lets would-be drops pass and counts them; pod traffic is never the
// host firewall's.
func TestHostFirewall(t *testing.T) {
	d := testDatapath(t, false, false)
	node, peer := netip.MustParseAddr("10.99.9.1"), netip.MustParseAddr("10.99.9.2")
	if err := d.IPCache().Upsert(netip.PrefixFrom(node, 32), IdentityHost); err != nil {
		t.Fatal(err)
	}
	in, out := d.objs.HostIn, d.objs.HostOut
	run := func(prog *ebpf.Program, pkt []byte) uint32 {
		t.Helper()
		got, _, err := prog.Test(pkt)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	// No host policy: allow-all, nothing tracked; a pod reaches the node.
	expect(t, d, d.objs.FromPod, syn(tClient, node, 40999, 23), 0, ReasonNotEnforced)
	if got := run(in, syn(peer, node, 40000, 23)); got != tcUnspec {
		t.Fatalf("host_in without host policy = %d; want TCX_NEXT", got)
	}
	if _, _, ok := ctEntry(t, d, peer, node, 40000, 23); ok {
		t.Fatal("host_in without host policy created a conntrack entry")
	}

	// Ingress enforced: port 22 from anyone.
	if err := d.SetPolicy(HostEndpointID, []PolicyEntry{{PolicyKey: PolicyKey{Direction: Ingress, Proto: ProtoTCP, Port: 22}, Verdict: Allow}}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetHost(HostEndpoint{EnforceIngress: true}); err != nil {
		t.Fatal(err)
	}
	expect(t, d, in, syn(peer, node, 40001, 22), 0, ReasonAllowed)
	expect(t, d, in, syn(peer, node, 40002, 23), 2, ReasonPolicyDenied)
	// The host's reply to the allowed flow, and its own connection out
	// (egress not enforced, tracked) whose reply comes back in.
	expect(t, d, out, tcpPacket(node, peer, 22, 40001), 0, ReasonReply)
	expect(t, d, out, syn(node, peer, 50000, 443), 0, ReasonNotEnforced)
	expect(t, d, in, tcpPacket(peer, node, 443, 50000), 0, ReasonReply)
	// A local pod's flow to the node (from_pod): the host's ingress policy
	// decides it too.
	expect(t, d, d.objs.FromPod, syn(tClient, node, 41000, 22), 0, ReasonAllowed)
	expect(t, d, d.objs.FromPod, syn(tClient, node, 41001, 23), 2, ReasonPolicyDenied)
	// Traffic of pods (not the host's addresses) is not the host firewall's.
	if got := run(in, syn(peer, tClient, 40003, 23)); got != tcUnspec {
		t.Errorf("host_in for a pod = %d; want TCX_NEXT", got)
	}
	if got := run(out, syn(tClient, peer, 40004, 23)); got != tcUnspec {
		t.Errorf("host_out for a pod = %d; want TCX_NEXT", got)
	}

	// Audit: the would-be drop passes and is counted.
	if err := d.SetHost(HostEndpoint{EnforceIngress: true, Audit: true}); err != nil {
		t.Fatal(err)
	}
	expect(t, d, in, syn(peer, node, 40005, 23), 0, ReasonHostAudit)
	if evs := drain(t, d); !slices.ContainsFunc(evs, func(e Event) bool {
		return e.Kind == EventVerdict && e.Audit && e.Endpoint == HostEndpointID && e.Direction == Ingress && e.Destination.Port() == 23
	}) {
		t.Errorf("audited host flow: events %+v; want an audited ingress verdict of the host endpoint", evs)
	}
	// The operator's override enforces whatever the agent says: the flow
	// audit mode let through is decided again by its next packet, dropped
	// ...
	if err := SetHostMode(d.PinDir(), HostModeEnforce); err != nil {
		t.Fatal(err)
	}
	expect(t, d, in, tcpPacket(peer, node, 40005, 23), 2, ReasonPolicyDenied)
	expect(t, d, in, syn(peer, node, 40006, 24), 2, ReasonPolicyDenied)
	if evs := drain(t, d); !slices.ContainsFunc(evs, func(e Event) bool {
		return e.Kind == EventDrop && e.Endpoint == HostEndpointID && e.Destination.Port() == 24
	}) {
		t.Errorf("denied host flow: events %+v; want a drop of the host endpoint", evs)
	}
	// ... or audits.
	if err := d.SetHost(HostEndpoint{EnforceIngress: true}); err != nil {
		t.Fatal(err)
	}
	if err := SetHostMode(d.PinDir(), HostModeAudit); err != nil {
		t.Fatal(err)
	}
	expect(t, d, in, syn(peer, node, 40007, 23), 0, ReasonHostAudit)
	st, err := PinnedHostState(d.PinDir())
	if err != nil {
		t.Fatal(err)
	}
	if !st.EnforceIngress || st.EnforceEgress || st.Audit || st.Mode != HostModeAudit {
		t.Errorf("PinnedHostState = %+v; want ingress enforced, agent audit off, mode audit", st)
	}
	if err := SetHostMode(d.PinDir(), HostModeConfig); err != nil {
		t.Fatal(err)
	}

	// Egress enforced: only 443 to anyone; the proxies' upstreams pass on.
	if err := d.SetPolicy(HostEndpointID, []PolicyEntry{{PolicyKey: PolicyKey{Direction: Egress, Proto: ProtoTCP, Port: 443}, Verdict: Allow}}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetHost(HostEndpoint{EnforceEgress: true}); err != nil {
		t.Fatal(err)
	}
	expect(t, d, out, syn(node, peer, 50001, 443), 0, ReasonAllowed)
	expect(t, d, out, syn(node, peer, 50002, 80), 2, ReasonPolicyDenied)
	// The node's flow to a local pod (to_pod): its egress policy decides.
	expect(t, d, d.objs.ToPod, syn(node, tClient, 50020, 443), 0, ReasonNotEnforced)
	expect(t, d, d.objs.ToPod, syn(node, tClient, 50021, 80), 2, ReasonPolicyDenied)
	// Lockdown drops the host's traffic.
	if err := d.Lockdown(HostEndpointID); err != nil {
		t.Fatal(err)
	}
	expect(t, d, in, syn(peer, node, 40008, 22), 2, ReasonLockdown)
}

// BenchmarkHostFirewall measures host_in and host_out per packet
// (BPF_PROG_TEST_RUN, ns/op is per packet): with no host policy (the idle
// path every node with the host firewall attached runs) and enforced, an
// established flow.
func BenchmarkHostFirewall(b *testing.B) {
	d := testDatapath(b, false, false)
	node, peer := netip.MustParseAddr("10.99.9.1"), netip.MustParseAddr("10.99.9.2")
	if err := d.IPCache().Upsert(netip.PrefixFrom(node, 32), IdentityHost); err != nil {
		b.Fatal(err)
	}
	if err := d.SetPolicy(HostEndpointID, []PolicyEntry{
		{PolicyKey: PolicyKey{Direction: Ingress, Proto: ProtoTCP, Port: 22}, Verdict: Allow},
		{PolicyKey: PolicyKey{Direction: Egress, Proto: ProtoAny}, Verdict: Allow},
	}); err != nil {
		b.Fatal(err)
	}
	in, out := tcpPacket(peer, node, 40000, 22), tcpPacket(node, peer, 22, 40000)
	for _, c := range []struct {
		name string
		host HostEndpoint
	}{
		{"idle", HostEndpoint{}},
		{"enforced-established", HostEndpoint{EnforceIngress: true, EnforceEgress: true}},
	} {
		if err := d.SetHost(c.host); err != nil {
			b.Fatal(err)
		}
		for _, p := range []struct {
			name string
			prog *ebpf.Program
			pkt  []byte
		}{{"host_in", d.objs.HostIn, in}, {"host_out", d.objs.HostOut, out}} {
			p.prog.Test(p.pkt) // the first packet creates the CT entry
			b.Run(c.name+"/"+p.name, func(b *testing.B) {
				_, per, err := p.prog.Benchmark(p.pkt, b.N, b.ResetTimer)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
			})
		}
	}
}
