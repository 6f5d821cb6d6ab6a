package redirect

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/internal/testenv"
)

// TestBadPackets feeds from_pod malformed, fragmented and non-IPv4 frames
// with BPF_PROG_TEST_RUN and checks the verdict and the counted reason.
func TestBadPackets(t *testing.T) {
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
	defer d.Close()
	src, dst := netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2")
	ep := Endpoint{ID: 1, IP: src, IfIndex: 1, Identity: 5001} // test runs see lo
	d.mu.Lock()
	d.eps[ep.ID] = ep
	err = d.writeEndpoint(ep)
	d.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	const (
		pass = 0 // TC_ACT_OK
		shot = 2 // TC_ACT_SHOT
	)
	tcp := func() []byte { return tcpPacket(src, dst, 40000, 80) }
	tests := []struct {
		name   string
		pkt    func() []byte
		want   uint32
		reason Reason
	}{
		{name: "valid", pkt: tcp, want: pass, reason: ReasonNotEnforced},
		{name: "ihl too small", pkt: func() []byte { p := tcp(); p[14] = 0x43; return p }, want: shot, reason: ReasonMalformed},
		{name: "tot_len beyond frame", pkt: func() []byte { p := tcp(); binary.BigEndian.PutUint16(p[16:], 4000); return p }, want: shot, reason: ReasonMalformed},
		{name: "not ipv4", pkt: func() []byte { p := tcp(); p[14] = 0x65; return p }, want: shot, reason: ReasonMalformed},
		{name: "orphan fragment", pkt: func() []byte { p := tcp(); binary.BigEndian.PutUint16(p[20:], 100); return p }, want: shot, reason: ReasonFragment},
		{name: "spoofed source", pkt: func() []byte { return tcpPacket(netip.MustParseAddr("10.99.0.9"), dst, 1, 80) }, want: shot, reason: ReasonSpoofed},
		{name: "ipv6 from an unknown source", pkt: func() []byte { return ip6Packet(unix.IPPROTO_TCP) }, want: shot, reason: ReasonSpoofed},
		{name: "ipv6 extension header", pkt: func() []byte { return ip6Packet(0) }, want: shot, reason: ReasonUnsupportedL3},
		{name: "ipv6 fragment", pkt: func() []byte { return ip6Packet(44) }, want: shot, reason: ReasonFragment},
		{name: "arp", pkt: func() []byte {
			p := make([]byte, 14+28)
			binary.BigEndian.PutUint16(p[12:], 0x0806)
			return p
		}, want: pass, reason: ReasonNonIP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, err := d.Count(tt.reason)
			if err != nil {
				t.Fatal(err)
			}
			got, _, err := d.objs.FromPod.Test(tt.pkt())
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("from_pod = %d; want %d", got, tt.want)
			}
			after, err := d.Count(tt.reason)
			if err != nil {
				t.Fatal(err)
			}
			if after != before+1 {
				t.Errorf("%v counter %d -> %d; want +1", tt.reason, before, after)
			}
		})
	}
}

func ip6Packet(nexthdr uint8) []byte {
	p := make([]byte, 14+40+20)
	binary.BigEndian.PutUint16(p[12:], 0x86dd)
	p[14] = 0x60
	binary.BigEndian.PutUint16(p[18:], 20)
	p[20] = nexthdr
	p[21] = 64
	return p
}
