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

// FuzzParse runs the real from_pod program (BPF_PROG_TEST_RUN) on random
// and mutated frames from the client endpoint, with both directions
// enforced and nothing allowed: every frame must be dropped except ARP and
// link-scope neighbour discovery (issue 12: nothing but IPv4, IPv6 and ARP
// may pass unchecked, and IPv4/IPv6 only through policy).
func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	d := testDatapath(f, true, true)
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 4096 {
			return // BPF_PROG_TEST_RUN needs an Ethernet header
		}
		ret, err := d.objs.FromPod.Run(&ebpf.RunOptions{Data: frame})
		if errors.Is(err, unix.EINVAL) {
			// The kernel refuses to build an skb from it (an IPv4 or
			// IPv6 ethertype without a full L3 header).
			return
		}
		if err != nil {
			t.Fatalf("run % x: %v", frame, err)
		}
		if ret == tcPass && !passesUnchecked(frame) {
			t.Fatalf("from_pod passed % x", frame)
		}
		if ret != tcPass && ret != tcShot {
			t.Fatalf("from_pod returned %d", ret)
		}
	})
}
