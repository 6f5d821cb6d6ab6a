package redirect

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/internal/testenv"
)

// tcpPacket builds Ethernet+IPv4+TCP (ACK) from src:sport to dst:dport.
func tcpPacket(src, dst netip.Addr, sport, dport uint16) []byte {
	p := make([]byte, 14+20+20+64)
	binary.BigEndian.PutUint16(p[12:], 0x0800)
	ip := p[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(p)-14))
	ip[8] = 64
	ip[9] = unix.IPPROTO_TCP
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	tcp[12] = 5 << 4
	tcp[13] = 0x10 // ACK
	return p
}

// BenchmarkFromPod measures from_pod per packet with BPF_PROG_TEST_RUN
// (no bpf_stats overhead), with 10k ipcache entries.
func BenchmarkFromPod(b *testing.B) {
	testenv.RequireRoot(b)
	dir := b.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	d, err := Load(Config{PinDir: dir})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	for i := range 10000 {
		if err := d.IPCache().Upsert(netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16 + byte(i>>16), byte(i >> 8), byte(i)}), 32), 100000); err != nil {
			b.Fatal(err)
		}
	}
	client, server := netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2")
	// Test runs see the loopback device: ifindex 1.
	for _, ep := range []Endpoint{
		{ID: 1, IP: client, IfIndex: 1, Identity: 5001, EnforceEgress: true, EnforceIngress: true},
		{ID: 2, IP: server, IfIndex: 1, Identity: 5002, EnforceEgress: true, EnforceIngress: true},
	} {
		d.mu.Lock()
		d.eps[ep.ID] = ep
		err := d.writeEndpoint(ep)
		d.mu.Unlock()
		if err != nil {
			b.Fatal(err)
		}
		if err := d.IPCache().Upsert(netip.PrefixFrom(ep.IP, 32), ep.Identity); err != nil {
			b.Fatal(err)
		}
	}
	if err := d.SetPolicy(1, []PolicyEntry{{PolicyKey: PolicyKey{Direction: Egress, Identity: 5002, Proto: ProtoTCP}, Verdict: Allow}}); err != nil {
		b.Fatal(err)
	}
	if err := d.SetPolicy(2, []PolicyEntry{{PolicyKey: PolicyKey{Direction: Ingress, Identity: 5001, Port: 80, Proto: ProtoTCP}, Verdict: Allow}}); err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name string
		pkt  []byte
	}{
		// The first run creates the CT entry; the rest are established.
		{"established", tcpPacket(client, server, 40000, 80)},
		// Server -> client replies of that flow.
		{"reply", tcpPacket(server, client, 80, 40000)},
		// Denied new flows (port 81) walk the whole policy lookup.
		{"denied-new", tcpPacket(client, server, 40001, 81)},
	}
	world := netip.MustParseAddr("192.0.2.1")
	cases = append(cases, []struct {
		name string
		pkt  []byte
	}{
		// to_pod (tc egress of the destination's veth): an established
		// flow from a node outside (not selected for L7), its first
		// packet allowed by the ingress policy.
		{"to_pod-established", tcpPacket(client, server, 40002, 80)},
		// A new flow from the world, denied by the ingress policy.
		{"to_pod-denied-new", tcpPacket(world, server, 40003, 80)},
		// from_netdev (tc ingress of a native device): traffic for the
		// host, and a pod's established flow that is not redirected.
		{"from_netdev-host", tcpPacket(world, netip.MustParseAddr("192.0.2.254"), 40004, 22)},
		{"from_netdev-pod-established", tcpPacket(client, server, 40002, 80)},
	}...)
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			prog := d.objs.FromPod
			switch {
			case strings.HasPrefix(tc.name, "to_pod"):
				prog = d.objs.ToPod
			case strings.HasPrefix(tc.name, "from_netdev"):
				prog = d.objs.FromNetdev
			}
			if _, _, err := prog.Test(tc.pkt); err != nil {
				b.Fatal(err)
			}
			_, dur, err := prog.Benchmark(tc.pkt, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(dur.Nanoseconds()), "ns/pkt")
		})
	}
}
