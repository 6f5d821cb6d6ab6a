package redirect

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/internal/testenv"
)

const (
	tcPass     = 0 // TC_ACT_OK
	tcShot     = 2 // TC_ACT_SHOT
	tcRedirect = 7 // TC_ACT_REDIRECT
)

var (
	tClient  = netip.MustParseAddr("10.99.0.1")
	tServer  = netip.MustParseAddr("10.99.0.2")
	tClient6 = netip.MustParseAddr("fd00:99::1")
	tServer6 = netip.MustParseAddr("fd00:99::2")
)

const (
	tClientID  = 5001
	tServerID  = 5002
	tClientEP  = 1
	noProxyFor = 9 // a proxy port nothing listens on in the test-run namespace
)

// testDatapath loads the datapath on a private bpffs with the client
// endpoint (10.99.0.1, fd00:99::1) registered on ifindex 1, which is what
// BPF_PROG_TEST_RUN packets arrive on; the server is a remote identity.
func testDatapath(t testing.TB, ingress, egress bool) *Datapath {
	t.Helper()
	testenv.RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		Cleanup(dir)
		unix.Unmount(dir, unix.MNT_DETACH)
	})
	d, err := Load(Config{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ep := Endpoint{ID: tClientEP, IP: tClient, IPv6: tClient6, IfIndex: 1, Identity: tClientID, EnforceIngress: ingress, EnforceEgress: egress}
	d.mu.Lock()
	d.eps[ep.ID] = ep
	err = d.writeEndpoint(ep)
	d.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []netip.Prefix{netip.PrefixFrom(tClient, 32), netip.PrefixFrom(tClient6, 128)} {
		if err := d.IPCache().Upsert(p, tClientID); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []netip.Prefix{netip.PrefixFrom(tServer, 32), netip.PrefixFrom(tServer6, 128)} {
		if err := d.IPCache().Upsert(p, tServerID); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// expect runs prog on pkt and checks the verdict and that reason was
// counted once.
func expect(t *testing.T, d *Datapath, prog *ebpf.Program, pkt []byte, want uint32, reason Reason) {
	t.Helper()
	before, err := d.Count(reason)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := prog.Test(pkt)
	if err != nil {
		t.Fatal(err)
	}
	after, err := d.Count(reason)
	if err != nil {
		t.Fatal(err)
	}
	if got != want || after != before+1 {
		t.Errorf("verdict %d, %v counted %d times; want verdict %d counted once", got, reason, after-before, want)
	}
}

func withTCPFlags(p []byte, flags byte) []byte {
	p[14+20+13] = flags
	return p
}

func syn(src, dst netip.Addr, sport, dport uint16) []byte {
	return withTCPFlags(tcpPacket(src, dst, sport, dport), 0x02)
}

// icmpPacket builds Ethernet+IPv4+ICMP (type, id).
func icmpPacket(src, dst netip.Addr, typ uint8, id uint16) []byte {
	p := make([]byte, 14+20+8+32)
	binary.BigEndian.PutUint16(p[12:], 0x0800)
	ip := p[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(p)-14))
	ip[8] = 64
	ip[9] = unix.IPPROTO_ICMP
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	ip[20] = typ
	binary.BigEndian.PutUint16(ip[24:], id)
	return p
}

// icmp6Packet builds Ethernet+IPv6+ICMPv6 (type, id) with a hop limit.
func icmp6Packet(src, dst netip.Addr, typ uint8, id uint16, hop uint8) []byte {
	p := make([]byte, 14+40+8+24)
	binary.BigEndian.PutUint16(p[12:], 0x86dd)
	ip := p[14:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(p)-14-40))
	ip[6] = unix.IPPROTO_ICMPV6
	ip[7] = hop
	s, d := src.As16(), dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	ip[40] = typ
	binary.BigEndian.PutUint16(ip[44:], id)
	return p
}

// vlanFrame wraps an IPv4 packet in VLAN tags with the given TPIDs,
// outermost first (VLAN id 0, as the QinQ attack uses).
func vlanFrame(inner []byte, tpids ...uint16) []byte {
	out := append([]byte{}, inner[:12]...)
	for _, tp := range tpids {
		out = binary.BigEndian.AppendUint16(out, tp)
		out = binary.BigEndian.AppendUint16(out, 0) // TCI: priority 0, VLAN 0
	}
	return append(out, inner[12:]...)
}

func ethFrame(ethertype uint16, n int) []byte {
	p := make([]byte, 14+n)
	binary.BigEndian.PutUint16(p[12:], ethertype)
	return p
}

// TestUnknownL3Dropped: from a pod (and to it) only IPv4, IPv6 and ARP
// pass; VLAN ethertypes (802.1Q, QinQ 802.1ad and 0x9100, with VLAN 0)
// and any other ethertype are dropped and counted (issue 12, item 1).
func TestUnknownL3Dropped(t *testing.T) {
	d := testDatapath(t, true, true)
	spoofed := tcpPacket(netip.MustParseAddr("10.99.0.7"), tServer, 40000, 80)
	tests := []struct {
		name   string
		pkt    []byte
		want   uint32
		reason Reason
	}{
		{"802.1Q VLAN 0", vlanFrame(spoofed, 0x8100), tcShot, ReasonVLAN},
		{"double VLAN 0", vlanFrame(spoofed, 0x8100, 0x8100), tcShot, ReasonVLAN},
		{"QinQ 802.1ad", vlanFrame(spoofed, 0x88a8, 0x8100), tcShot, ReasonVLAN},
		{"0x9100", vlanFrame(spoofed, 0x9100), tcShot, ReasonVLAN},
		{"LLDP", ethFrame(0x88cc, 64), tcShot, ReasonUnknownL3},
		{"MPLS", ethFrame(0x8847, 64), tcShot, ReasonUnknownL3},
		{"IPX", ethFrame(0x8137, 64), tcShot, ReasonUnknownL3},
		{"802.3 length field", ethFrame(0x0040, 64), tcShot, ReasonUnknownL3},
		{"ARP", ethFrame(0x0806, 28), tcPass, ReasonNonIP},
	}
	for _, tt := range tests {
		for _, prog := range []struct {
			name string
			p    *ebpf.Program
		}{{"from_pod", d.objs.FromPod}, {"to_pod", d.objs.ToPod}} {
			t.Run(tt.name+"/"+prog.name, func(t *testing.T) {
				expect(t, d, prog.p, tt.pkt, tt.want, tt.reason)
			})
		}
	}
}

func allowEgress(port uint16, wild uint8, v Verdict, proxy uint16) PolicyEntry {
	return PolicyEntry{PolicyKey: PolicyKey{Direction: Egress, Identity: tServerID, Port: port, PortWild: wild, Proto: ProtoTCP}, Verdict: v, ProxyPort: proxy}
}

// TestConntrackRevalidatedAfterPolicyChange: a flow decided under an older
// policy is decided again (issue 12, item 2): after a revocation the same
// 5-tuple, established or reused by a new connection, is dropped; a
// redirect added later applies to a reused tuple.
func TestConntrackRevalidatedAfterPolicyChange(t *testing.T) {
	d := testDatapath(t, true, true)
	from := d.objs.FromPod
	if err := d.SetPolicy(tClientEP, []PolicyEntry{allowEgress(80, 0, Allow, 0)}); err != nil {
		t.Fatal(err)
	}
	expect(t, d, from, syn(tClient, tServer, 40000, 80), tcPass, ReasonAllowed)
	expect(t, d, from, tcpPacket(tClient, tServer, 40000, 80), tcPass, ReasonEstablished)

	// Revoke (the direction stays enforced, nothing allowed).
	if err := d.SetPolicy(tClientEP, []PolicyEntry{allowEgress(443, 0, Allow, 0)}); err != nil {
		t.Fatal(err)
	}
	expect(t, d, from, tcpPacket(tClient, tServer, 40000, 80), tcShot, ReasonPolicyDenied)
	expect(t, d, from, syn(tClient, tServer, 40000, 80), tcShot, ReasonPolicyDenied)

	// Allowed again, then an L7 redirect is added: the reused tuple goes
	// to the proxy (no proxy socket here, so it is dropped as such).
	if err := d.SetPolicy(tClientEP, []PolicyEntry{allowEgress(80, 0, Allow, 0)}); err != nil {
		t.Fatal(err)
	}
	expect(t, d, from, syn(tClient, tServer, 40001, 80), tcPass, ReasonAllowed)
	if err := d.SetPolicy(tClientEP, []PolicyEntry{allowEgress(80, 0, Redirect, noProxyFor)}); err != nil {
		t.Fatal(err)
	}
	expect(t, d, from, syn(tClient, tServer, 40001, 80), tcShot, ReasonNoProxySocket)
	expect(t, d, from, tcpPacket(tClient, tServer, 40001, 80), tcShot, ReasonNoProxySocket)

	// Turning ingress enforcement on re-decides admitted inbound flows.
	d2 := testDatapath(t, false, false)
	expect(t, d2, d2.objs.ToPod, syn(tServer, tClient, 50000, 22), tcPass, ReasonNotEnforced)
	expect(t, d2, d2.objs.ToPod, tcpPacket(tServer, tClient, 50000, 22), tcPass, ReasonEstablished)
	if err := d2.AddEndpoint(Endpoint{ID: tClientEP, IP: tClient, IPv6: tClient6, IfIndex: 1, Identity: tClientID, EnforceIngress: true}); err != nil {
		t.Fatal(err)
	}
	expect(t, d2, d2.objs.ToPod, tcpPacket(tServer, tClient, 50000, 22), tcShot, ReasonPolicyDenied)
}

func ctEntry(t *testing.T, d *Datapath, src, dst netip.Addr, sport, dport uint16) (datapathCtKey, datapathCtValue, bool) {
	t.Helper()
	var (
		k datapathCtKey
		v datapathCtValue
	)
	it := d.objs.WardCt.Iterate()
	_, sw := addrWords(src)
	_, dw := addrWords(dst)
	for it.Next(&k, &v) {
		if (k.Saddr == sw && k.Daddr == dw && k.Sport == htons(sport) && k.Dport == htons(dport)) ||
			(k.Saddr == dw && k.Daddr == sw && k.Sport == htons(dport) && k.Dport == htons(sport)) {
			return k, v, true
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return k, v, false
}

// TestConntrackLifetimes: entries expire per protocol and state (Cilium's
// defaults), expired entries are not used by the datapath, GC removes them,
// and a SYN over a closing entry is a new flow.
func TestConntrackLifetimes(t *testing.T) {
	d := testDatapath(t, false, true)
	from, to := d.objs.FromPod, d.objs.ToPod
	if err := d.SetPolicy(tClientEP, []PolicyEntry{allowEgress(80, 0, Allow, 0), {PolicyKey: PolicyKey{Direction: Egress, Identity: tServerID, Port: 53, Proto: ProtoUDP}, Verdict: Allow}}); err != nil {
		t.Fatal(err)
	}
	gcAfter := func(dur time.Duration) int {
		t.Helper()
		now, err := monotonicNow()
		if err != nil {
			t.Fatal(err)
		}
		n, err := d.gcCT(now + uint64(dur))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	has := func(sport, dport uint16) bool {
		_, _, ok := ctEntry(t, d, tClient, tServer, sport, dport)
		return ok
	}

	// Unanswered SYN: 60 s.
	expect(t, d, from, syn(tClient, tServer, 41000, 80), tcPass, ReasonAllowed)
	if n := gcAfter(50 * time.Second); n != 0 || !has(41000, 80) {
		t.Fatalf("GC at +50s deleted %d; SYN entry present %v", n, has(41000, 80))
	}
	if n := gcAfter(61 * time.Second); n != 1 || has(41000, 80) {
		t.Fatalf("GC at +61s deleted %d; SYN entry still present %v", n, has(41000, 80))
	}

	// Answered: established, 6 h.
	expect(t, d, from, syn(tClient, tServer, 41001, 80), tcPass, ReasonAllowed)
	expect(t, d, to, withTCPFlags(tcpPacket(tServer, tClient, 80, 41001), 0x12), tcPass, ReasonReply)
	if n := gcAfter(5 * time.Hour); n != 0 || !has(41001, 80) {
		t.Fatalf("GC at +5h deleted %d of an established flow", n)
	}
	// FIN: closing, 10 s.
	expect(t, d, from, withTCPFlags(tcpPacket(tClient, tServer, 41001, 80), 0x11), tcPass, ReasonEstablished)
	if n := gcAfter(11 * time.Second); n != 1 || has(41001, 80) {
		t.Fatalf("GC at +11s after FIN deleted %d", n)
	}

	// UDP: 60 s.
	udp := tcpPacket(tClient, tServer, 41002, 53)
	udp[14+9] = unix.IPPROTO_UDP
	expect(t, d, from, udp, tcPass, ReasonAllowed)
	expect(t, d, from, udp, tcPass, ReasonEstablished)
	if n := gcAfter(61 * time.Second); n != 1 {
		t.Fatalf("GC at +61s deleted %d UDP entries", n)
	}

	// The datapath itself ignores an expired entry: the packet is a new
	// flow, decided by policy.
	expect(t, d, from, syn(tClient, tServer, 41003, 80), tcPass, ReasonAllowed)
	k, v, ok := ctEntry(t, d, tClient, tServer, 41003, 80)
	if !ok {
		t.Fatal("no CT entry")
	}
	v.LastSeen -= uint64(61 * time.Second)
	if err := d.objs.WardCt.Update(&k, &v, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	expect(t, d, from, syn(tClient, tServer, 41003, 80), tcPass, ReasonAllowed)

	// RST closes; a new SYN on the tuple is a new flow.
	expect(t, d, from, withTCPFlags(tcpPacket(tClient, tServer, 41003, 80), 0x04), tcPass, ReasonEstablished)
	expect(t, d, from, syn(tClient, tServer, 41003, 80), tcPass, ReasonAllowed)

	if n, err := d.GC(); err != nil || n != 0 {
		t.Fatalf("GC now = %d, %v; want 0 (nothing expired)", n, err)
	}
}

// TestPortBlocks: a range becomes the fewest aligned blocks covering
// exactly the range.
func TestPortBlocks(t *testing.T) {
	if got := len(PortBlocks(1024, 65535)); got != 6 {
		t.Errorf("1024-65535: %d blocks; want 6", got)
	}
	if got := PortBlocks(0, 65535); len(got) != 1 || got[0] != (PortBlock{0, 16}) {
		t.Errorf("0-65535: %v; want one 16-bit block", got)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		lo, hi := uint16(r.IntN(65536)), uint16(r.IntN(65536))
		if hi < lo {
			lo, hi = hi, lo
		}
		next := uint32(lo)
		bs := PortBlocks(lo, hi)
		if len(bs) > 30 {
			t.Fatalf("%d-%d: %d blocks", lo, hi, len(bs))
		}
		for _, b := range bs {
			if uint32(b.Port) != next || b.Port&(1<<b.Wild-1) != 0 && b.Wild < 16 {
				t.Fatalf("%d-%d: block %v not aligned/contiguous at %d", lo, hi, b, next)
			}
			next += 1 << b.Wild
		}
		if next != uint32(hi)+1 {
			t.Fatalf("%d-%d: blocks end at %d", lo, hi, next-1)
		}
	}
}

// TestPortRangeEntries: wide ranges are a few masked entries; a deny on
// 1024-65535 wins over an allow of the whole protocol and over a narrower
// allow of the same identity (issue 12, item 4).
func TestPortRangeEntries(t *testing.T) {
	d := testDatapath(t, false, true)
	from := d.objs.FromPod
	var es []PolicyEntry
	for _, b := range PortBlocks(1024, 65535) {
		es = append(es, PolicyEntry{PolicyKey: PolicyKey{Direction: Egress, Port: b.Port, PortWild: b.Wild, Proto: ProtoTCP}, Verdict: Deny})
	}
	for _, b := range PortBlocks(8000, 8002) {
		es = append(es, allowEgress(b.Port, b.Wild, Allow, 0))
	}
	es = append(es,
		PolicyEntry{PolicyKey: PolicyKey{Direction: Egress, Identity: tServerID, Proto: ProtoTCP}, Verdict: Allow},
		// Same identity: a more specific allow under a shorter deny.
		PolicyEntry{PolicyKey: PolicyKey{Direction: Egress, Identity: tServerID, Port: 2048, PortWild: 11, Proto: ProtoUDP}, Verdict: Deny},
		PolicyEntry{PolicyKey: PolicyKey{Direction: Egress, Identity: tServerID, Port: 3000, Proto: ProtoUDP}, Verdict: Allow},
		PolicyEntry{PolicyKey: PolicyKey{Direction: Egress, Identity: tServerID, Port: 4096, Proto: ProtoUDP}, Verdict: Allow},
	)
	if err := d.SetPolicy(tClientEP, es); err != nil {
		t.Fatal(err)
	}
	if n := len(d.Policy(tClientEP)); n != len(es) {
		t.Errorf("%d entries in the map; want %d", n, len(es))
	}
	sport := uint16(30000)
	for _, c := range []struct {
		port   uint16
		want   uint32
		reason Reason
	}{
		{80, tcPass, ReasonAllowed}, {1023, tcPass, ReasonAllowed},
		{1024, tcShot, ReasonPolicyDenied}, {5000, tcShot, ReasonPolicyDenied},
		{8001, tcShot, ReasonPolicyDenied}, {65535, tcShot, ReasonPolicyDenied},
	} {
		sport++
		expect(t, d, from, syn(tClient, tServer, sport, c.port), c.want, c.reason)
	}
	udp := func(dport uint16) []byte {
		sport++
		p := tcpPacket(tClient, tServer, sport, dport)
		p[14+9] = unix.IPPROTO_UDP
		return p
	}
	expect(t, d, from, udp(3000), tcShot, ReasonPolicyDenied)
	expect(t, d, from, udp(4096), tcPass, ReasonAllowed)

	// Invalid keys are rejected, never written.
	for _, bad := range []PolicyKey{
		{Direction: Egress, Port: 8001, PortWild: 1, Proto: ProtoTCP},
		{Direction: Egress, Port: 0, PortWild: 17, Proto: ProtoTCP},
		{Direction: Egress, Port: 0, PortWild: 3},
	} {
		if err := d.SetPolicy(tClientEP, []PolicyEntry{{PolicyKey: bad, Verdict: Allow}}); err == nil {
			t.Errorf("SetPolicy(%+v) succeeded", bad)
		}
	}
}

// TestICMPPolicy: ICMP is keyed by type: an allowed echo passes and its
// reply returns, other types and unsolicited replies are denied, and a
// type deny wins over an allow of every type (issue 12, item 6).
func TestICMPPolicy(t *testing.T) {
	d := testDatapath(t, true, true)
	from, to := d.objs.FromPod, d.objs.ToPod
	if err := d.SetPolicy(tClientEP, []PolicyEntry{{PolicyKey: PolicyKey{Direction: Egress, Identity: tServerID, Port: 8, Proto: ProtoICMP}, Verdict: Allow}}); err != nil {
		t.Fatal(err)
	}
	expect(t, d, from, icmpPacket(tClient, tServer, 8, 7), tcPass, ReasonAllowed)
	expect(t, d, to, icmpPacket(tServer, tClient, 0, 7), tcPass, ReasonReply)
	expect(t, d, to, icmpPacket(tServer, tClient, 0, 9), tcShot, ReasonPolicyDenied)
	expect(t, d, from, icmpPacket(tClient, tServer, 13, 0), tcShot, ReasonPolicyDenied)
	expect(t, d, to, icmpPacket(tServer, tClient, 8, 7), tcShot, ReasonPolicyDenied)

	if err := d.SetPolicy(tClientEP, []PolicyEntry{
		{PolicyKey: PolicyKey{Direction: Egress, Identity: tServerID, Proto: ProtoICMP}, Verdict: Allow},
		{PolicyKey: PolicyKey{Direction: Egress, Port: 8, Proto: ProtoICMP}, Verdict: Deny},
	}); err != nil {
		t.Fatal(err)
	}
	expect(t, d, from, icmpPacket(tClient, tServer, 8, 7), tcShot, ReasonPolicyDenied)
	expect(t, d, from, icmpPacket(tClient, tServer, 13, 0), tcPass, ReasonAllowed)
}

// TestICMPv6InfoTypes: MLD and node-information messages no longer pass
// before the source check and policy; neighbour discovery passes only
// with hop limit 255, a link-scope destination and a link-local,
// unspecified or own source (issue 12, item 6).
func TestICMPv6InfoTypes(t *testing.T) {
	d := testDatapath(t, true, true)
	from, to := d.objs.FromPod, d.objs.ToPod
	ll := netip.MustParseAddr("fe80::1")
	mcastAll := netip.MustParseAddr("ff02::16")
	solicited := netip.MustParseAddr("ff02::1:ff00:2")
	other := netip.MustParseAddr("fd00:99::7")
	tests := []struct {
		name   string
		prog   *ebpf.Program
		pkt    []byte
		want   uint32
		reason Reason
	}{
		{"MLDv2 report from link-local", from, icmp6Packet(ll, mcastAll, 143, 0, 1), tcShot, ReasonSpoofed},
		{"MLD query from own address", from, icmp6Packet(tClient6, mcastAll, 130, 0, 1), tcShot, ReasonPolicyDenied},
		{"node information query", from, icmp6Packet(tClient6, tServer6, 139, 0, 64), tcShot, ReasonPolicyDenied},
		{"node information from spoofed source", from, icmp6Packet(other, tServer6, 139, 0, 64), tcShot, ReasonSpoofed},
		{"node information to the pod", to, icmp6Packet(tServer6, tClient6, 140, 0, 64), tcShot, ReasonPolicyDenied},
		{"MLD to the pod", to, icmp6Packet(ll, tClient6, 131, 0, 1), tcShot, ReasonPolicyDenied},
		{"NS link-local hop 255", from, icmp6Packet(ll, solicited, 135, 0, 255), tcPass, ReasonNeighbourDiscovery},
		{"NS unspecified (DAD)", from, icmp6Packet(netip.IPv6Unspecified(), solicited, 135, 0, 255), tcPass, ReasonNeighbourDiscovery},
		{"NS own address", from, icmp6Packet(tClient6, solicited, 135, 0, 255), tcPass, ReasonNeighbourDiscovery},
		{"NS hop 64", from, icmp6Packet(ll, solicited, 135, 0, 64), tcShot, ReasonSpoofed},
		{"NS spoofed global source", from, icmp6Packet(other, solicited, 135, 0, 255), tcShot, ReasonSpoofed},
		{"NA to a global destination", from, icmp6Packet(ll, tServer6, 136, 0, 255), tcShot, ReasonSpoofed},
		{"RA to the pod", to, icmp6Packet(ll, netip.MustParseAddr("ff02::1"), 134, 0, 255), tcPass, ReasonNeighbourDiscovery},
		{"echo request denied", from, icmp6Packet(tClient6, tServer6, 128, 1, 64), tcShot, ReasonPolicyDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { expect(t, d, tt.prog, tt.pkt, tt.want, tt.reason) })
	}
	if err := d.SetPolicy(tClientEP, []PolicyEntry{{PolicyKey: PolicyKey{Direction: Egress, Identity: tServerID, Port: 128, Proto: 58}, Verdict: Allow}}); err != nil {
		t.Fatal(err)
	}
	expect(t, d, from, icmp6Packet(tClient6, tServer6, 128, 1, 64), tcPass, ReasonAllowed)
	expect(t, d, to, icmp6Packet(tServer6, tClient6, 129, 1, 64), tcPass, ReasonReply)
}

// TestLockdown: Lockdown drops everything to and from the endpoint until
// a SetPolicy succeeds.
func TestLockdown(t *testing.T) {
	d := testDatapath(t, true, true)
	if err := d.SetPolicy(tClientEP, []PolicyEntry{allowEgress(80, 0, Allow, 0)}); err != nil {
		t.Fatal(err)
	}
	expect(t, d, d.objs.FromPod, syn(tClient, tServer, 42000, 80), tcPass, ReasonAllowed)
	if err := d.Lockdown(tClientEP); err != nil {
		t.Fatal(err)
	}
	if !d.Locked(tClientEP) {
		t.Error("Locked = false after Lockdown")
	}
	expect(t, d, d.objs.FromPod, tcpPacket(tClient, tServer, 42000, 80), tcShot, ReasonLockdown)
	expect(t, d, d.objs.ToPod, tcpPacket(tServer, tClient, 80, 42000), tcShot, ReasonLockdown)
	if err := d.SetPolicy(tClientEP, []PolicyEntry{allowEgress(80, 0, Allow, 0)}); err != nil {
		t.Fatal(err)
	}
	expect(t, d, d.objs.FromPod, tcpPacket(tClient, tServer, 42000, 80), tcPass, ReasonAllowed) // re-decided
}

// skbCtx is the head of struct __sk_buff a test run may set: len and
// pkt_type must be zero, mark is the packet's mark.
type skbCtx struct{ Len, PktType, Mark uint32 }

// TestProxyUpstreamSharingATuple: an egress proxy's upstream leaves from
// its client's address (original_src), so it may take the 4-tuple of the
// client's own redirected connection. to_pod then meets that flow's
// conntrack entry (verdict redirect) on the upstream's packets: it must
// pass them by the upstream's own verdict (the egress proxy applied the
// destination's ingress rules: MarkIngressChecked) and leave the client's
// entry as it is, not hairpin them back into a proxy.
func TestProxyUpstreamSharingATuple(t *testing.T) {
	d := testDatapath(t, true, false)
	const proxy = noProxyFor
	if err := d.SetPolicy(tClientEP, []PolicyEntry{{PolicyKey: PolicyKey{Direction: Ingress, Identity: tServerID, Port: 80, Proto: ProtoTCP}, Verdict: Redirect, ProxyPort: proxy}}); err != nil {
		t.Fatal(err)
	}
	// The flow from tServer:40001 to the endpoint's port 80, redirected.
	expect(t, d, d.objs.ToPod, syn(tServer, tClient, 40001, 80), tcRedirect, ReasonHairpin)
	_, v, ok := ctEntry(t, d, tServer, tClient, 40001, 80)
	if !ok || v.Verdict != uint8(Redirect) {
		t.Fatalf("conntrack entry %+v, %v; want a redirect", v, ok)
	}
	// An upstream with the same tuple, from an egress proxy that applied
	// the endpoint's ingress rules.
	mark := ProxyEgressMark(tServerID) | MarkIngressChecked
	for _, pkt := range [][]byte{syn(tServer, tClient, 40001, 80), tcpPacket(tServer, tClient, 40001, 80)} {
		before, err := d.Count(ReasonProxy)
		if err != nil {
			t.Fatal(err)
		}
		ret, err := d.objs.ToPod.Run(&ebpf.RunOptions{Data: pkt, Context: skbCtx{Mark: mark}})
		if err != nil {
			t.Fatal(err)
		}
		after, _ := d.Count(ReasonProxy)
		if ret != tcPass || after != before+1 {
			t.Errorf("upstream packet sharing a redirected flow's tuple: verdict %d, proxy-pass count +%d; want %d, +1", ret, after-before, tcPass)
		}
	}
	if _, v2, ok := ctEntry(t, d, tServer, tClient, 40001, 80); !ok || v2.Verdict != v.Verdict || v2.ProxyPort != v.ProxyPort {
		t.Errorf("the client's conntrack entry changed: %+v -> %+v (%v)", v, v2, ok)
	}
	// Without MarkIngressChecked the upstream is still refused.
	ret, err := d.objs.ToPod.Run(&ebpf.RunOptions{Data: tcpPacket(tServer, tClient, 40001, 80), Context: skbCtx{Mark: ProxyEgressMark(tServerID)}})
	if err != nil {
		t.Fatal(err)
	}
	if ret != tcShot {
		t.Errorf("upstream without MarkIngressChecked: verdict %d; want dropped", ret)
	}
}
