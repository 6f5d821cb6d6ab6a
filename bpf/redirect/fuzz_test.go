package redirect

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// passesUnchecked reports whether from_pod may pass frame with no policy
// allowing anything: ARP, and ICMPv6 neighbour discovery with hop limit
// 255 to a link-scope destination. Nothing else, IPv4 and IPv6 included.
func passesUnchecked(frame []byte) bool {
	if len(frame) < 14 {
		return false
	}
	switch binary.BigEndian.Uint16(frame[12:]) {
	case 0x0806:
		return true
	case 0x86dd:
		if len(frame) < 14+40+1 {
			return false
		}
		ip := frame[14:]
		dst := ip[24:40]
		linkScope := (dst[0] == 0xfe && dst[1]&0xc0 == 0x80) || (dst[0] == 0xff && dst[1]&0x0f == 0x02)
		return ip[6] == 58 && ip[7] == 255 && ip[40] >= 133 && ip[40] <= 137 && linkScope
	}
	return false
}

// fuzzSeeds are well-formed frames of every kind the parser tells apart,
// plus bounded pseudo-random mutations of them (deterministic, so plain
// `go test` always runs the same corpus).
func fuzzSeeds() [][]byte {
	other := netip.MustParseAddr("10.99.0.9")
	ll := netip.MustParseAddr("fe80::1")
	base := [][]byte{
		tcpPacket(tClient, tServer, 1000, 80),
		syn(tClient, tServer, 1001, 443),
		tcpPacket(other, tServer, 1002, 80),
		icmpPacket(tClient, tServer, 8, 1),
		icmpPacket(tClient, tServer, 3, 0),
		icmp6Packet(tClient6, tServer6, 128, 1, 64),
		icmp6Packet(ll, netip.MustParseAddr("ff02::16"), 143, 0, 1),
		icmp6Packet(ll, netip.MustParseAddr("ff02::1:ff00:2"), 135, 0, 255),
		icmp6Packet(tClient6, tServer6, 139, 0, 64),
		ip6Packet(6),
		ip6Packet(44),
		vlanFrame(tcpPacket(other, tServer, 1, 80), 0x8100, 0x8100),
		vlanFrame(tcpPacket(tClient, tServer, 1, 80), 0x88a8, 0x8100),
		vlanFrame(icmp6Packet(tClient6, tServer6, 128, 1, 64), 0x9100),
		ethFrame(0x0806, 28),
		ethFrame(0x88cc, 40),
		ethFrame(0x0000, 40),
	}
	frag := tcpPacket(tClient, tServer, 1003, 80)
	binary.BigEndian.PutUint16(frag[14+6:], 0x2000) // first fragment
	base = append(base, frag)
	udp := tcpPacket(tClient, tServer, 1004, 53)
	udp[14+9] = 17
	base = append(base, udp)

	out := append([][]byte{}, base...)
	r := rand.New(rand.NewPCG(12, 34))
	for range 256 {
		f := append([]byte{}, base[r.IntN(len(base))]...)
		switch r.IntN(4) {
		case 0: // flip bytes
			for range 1 + r.IntN(4) {
				f[r.IntN(len(f))] ^= byte(1 + r.IntN(255))
			}
		case 1: // truncate
			f = f[:14+r.IntN(len(f)-13)]
		case 2: // random ethertype
			binary.BigEndian.PutUint16(f[12:], uint16(r.IntN(65536)))
		case 3: // random frame
			f = make([]byte, 14+r.IntN(200))
			for i := range f {
				f[i] = byte(r.IntN(256))
			}
		}
		out = append(out, f)
	}
	return out
}

// l3Passable reports whether a frame's ethertype may pass at all: IPv4,
// IPv6 or ARP (never a VLAN tag, never anything else).
func l3Passable(frame []byte) bool {
	switch binary.BigEndian.Uint16(frame[12:]) {
	case 0x0800, 0x86dd, 0x0806:
		return true
	}
	return false
}

// FuzzParse runs the real programs (BPF_PROG_TEST_RUN) on random and
// mutated frames from the client endpoint (issue 12: nothing but IPv4,
// IPv6 and ARP may pass, and IPv4/IPv6 only through policy):
//   - from_pod and to_pod with both directions enforced and nothing
//     allowed drop every frame except ARP and link-scope neighbour
//     discovery;
//   - from_pod with everything allowed passes only IPv4, IPv6 and ARP;
//   - from_netdev (a native device's ingress) never drops: it only
//     assigns flows the proxy already owns.
func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	deny := testDatapath(f, true, true)
	open := testDatapath(f, true, true)
	if err := open.SetPolicy(tClientEP, []PolicyEntry{
		{PolicyKey: PolicyKey{Direction: Egress}, Verdict: Allow},
		{PolicyKey: PolicyKey{Direction: Ingress}, Verdict: Allow},
	}); err != nil {
		f.Fatal(err)
	}
	run := func(t *testing.T, prog *ebpf.Program, frame []byte) (uint32, bool) {
		ret, err := prog.Run(&ebpf.RunOptions{Data: frame})
		if errors.Is(err, unix.EINVAL) {
			// The kernel refuses to build an skb from it (an IPv4 or
			// IPv6 ethertype without a full L3 header).
			return 0, false
		}
		if err != nil {
			t.Fatalf("run % x: %v", frame, err)
		}
		if ret != tcPass && ret != tcShot {
			t.Fatalf("returned %d for % x", ret, frame)
		}
		return ret, true
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 4096 {
			return // BPF_PROG_TEST_RUN needs an Ethernet header
		}
		for _, prog := range []*ebpf.Program{deny.objs.FromPod, deny.objs.ToPod} {
			if ret, ok := run(t, prog, frame); ok && ret == tcPass && !passesUnchecked(frame) {
				t.Fatalf("%v passed with nothing allowed: % x", prog, frame)
			}
		}
		if ret, ok := run(t, open.objs.FromPod, frame); ok && ret == tcPass && !l3Passable(frame) {
			t.Fatalf("from_pod passed a frame that is not IPv4, IPv6 or ARP: % x", frame)
		}
		if ret, ok := run(t, open.objs.FromNetdev, frame); ok && ret != tcPass {
			t.Fatalf("from_netdev returned %d for % x; want pass", ret, frame)
		}
	})
}
