package attack

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/netns"
)

// checksum6 is the Internet checksum of an upper-layer packet over IPv6's
// pseudo-header (RFC 8200 section 8.1).
func checksum6(src, dst netip.Addr, proto uint8, l4 []byte) uint16 {
	s, d := src.As16(), dst.As16()
	ph := append(append(append([]byte{}, s[:]...), d[:]...), 0, 0, 0, 0, 0, 0, 0, proto)
	binary.BigEndian.PutUint16(ph[34:], uint16(len(l4)))
	return ipChecksum(append(ph, l4...))
}

// ip6Frame builds an Ethernet frame carrying IPv6 with l4 (whose checksum
// at csumOff is filled in).
func ip6Frame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, proto, hop uint8, l4 []byte, csumOff int) []byte {
	binary.BigEndian.PutUint16(l4[csumOff:], 0)
	binary.BigEndian.PutUint16(l4[csumOff:], checksum6(src, dst, proto, l4))
	f := append(append([]byte{}, dstMAC...), srcMAC...)
	f = binary.BigEndian.AppendUint16(f, 0x86dd)
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
	ip[6], ip[7] = proto, hop
	s, d := src.As16(), dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(append(f, ip...), l4...)
}

// icmp6 is an ICMPv6 message: type, code 0, then payload.
func icmp6(typ uint8, payload string) []byte {
	return append([]byte{typ, 0, 0, 0, 0, 0, 0, 0}, payload...)
}

// udp6 is a UDP datagram to dport.
func udp6(dport uint16, payload string) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], 40000)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	return append(b, payload...)
}

// queuedConn reads a datagram already in the socket's queue, without
// waiting.
func queuedConn(t *testing.T, c syscall.Conn, buf []byte) (int, bool) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var (
		n    int
		rerr error
	)
	if err := rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if errors.Is(rerr, unix.EAGAIN) {
		return 0, false
	}
	if rerr != nil {
		t.Fatal(rerr)
	}
	return n, true
}

// TestAttackICMPv6InfoTypes: under a default-deny policy, a pod sends
// ICMPv6 MLD (130, 131, 132, 143) and node-information (139, 140)
// messages carrying a payload to another pod's IPv6 address, as itself
// and with a spoofed source, from a raw socket. The datapath used to pass
// types 130-143 before the source check and the policy lookup in both
// directions, so they reached the victim; now each is dropped. An allowed
// UDP datagram sent after them shows the path works and that they had
// their chance to arrive.
//
// This attack runs on the bpf/redirect datapath directly, not through the
// agent: the agent registers endpoints with their IPv4 address only
// (agent/datapath.go passes Addrs[0]) and conformance/node makes IPv4
// pods, so an agent-run pod has no IPv6 to attack with. Fails against
// 44463a3^ (every message arrived).
func TestAttackICMPv6InfoTypes(t *testing.T) {
	topo := netns.New(t)
	pin := t.TempDir()
	if err := unix.Mount("bpf", pin, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { redirect.Cleanup(pin); unix.Unmount(pin, unix.MNT_DETACH) })
	dp, err := redirect.Load(redirect.Config{PinDir: pin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	const idAttacker, idVictim, idBystander = 6001, 6002, 6003
	ids := map[string]uint32{"attacker": idAttacker, "victim": idVictim, "bystander": idBystander}
	p := map[string]*netns.Pod{}
	for _, name := range []string{"attacker", "victim", "bystander"} {
		p[name] = topo.AddPod(t, netns.PodConfig{Name: name, IPv6: true})
	}
	const canaryPort = 9998
	policies := map[string][]redirect.PolicyEntry{
		"attacker": {{PolicyKey: redirect.PolicyKey{Direction: redirect.Egress, Identity: idVictim, Port: canaryPort, Proto: unix.IPPROTO_UDP}, Verdict: redirect.Allow}},
		"victim":   {{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: idAttacker, Port: canaryPort, Proto: unix.IPPROTO_UDP}, Verdict: redirect.Allow}},
	}
	for i, name := range []string{"attacker", "victim", "bystander"} {
		if err := dp.SetPolicy(uint32(i+1), policies[name]); err != nil {
			t.Fatal(err)
		}
		if err := dp.AddEndpoint(redirect.Endpoint{ID: uint32(i + 1), IP: p[name].IP, IPv6: p[name].IPv6, IfIndex: p[name].HostIfIndex,
			Identity: ids[name], EnforceIngress: true, EnforceEgress: true}); err != nil {
			t.Fatal(err)
		}
	}
	att, vic := p["attacker"], p["victim"]
	raw, err := vic.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	canary, err := vic.ListenPacket("udp6", "[::]:9998")
	if err != nil {
		t.Fatal(err)
	}
	defer canary.Close()

	frame := func(src netip.Addr, proto uint8, l4 []byte, csumOff int) []byte {
		return ip6Frame(att.HostMAC, att.PodMAC, src, vic.IPv6, proto, 64, l4, csumOff)
	}
	var frames [][]byte
	for _, typ := range []uint8{130, 131, 132, 139, 140, 143} {
		for _, src := range []netip.Addr{att.IPv6, p["bystander"].IPv6} {
			// An even length: ipChecksum ignores a trailing odd byte, and a
			// bad checksum would make the victim drop what passed.
			frames = append(frames, frame(src, unix.IPPROTO_ICMPV6, icmp6(typ, "attack-payload "+strings.Repeat("x", 65)), 2))
		}
	}
	frames = append(frames, frame(att.IPv6, unix.IPPROTO_UDP, udp6(canaryPort, "canary"), 6))
	sendRaw(t, att, frames...)

	buf := make([]byte, 2048)
	canary.SetReadDeadline(time.Now().Add(30 * time.Second)) // bounds a broken path, not a timing assertion
	n, _, err := canary.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "canary" {
		t.Fatalf("the allowed canary = %q, %v; want it to arrive", buf[:n], err)
	}
	for {
		n, ok := queuedConn(t, raw.(syscall.Conn), buf)
		if !ok {
			break
		}
		// A raw ICMPv6 socket also gets the host's neighbour discovery.
		if strings.Contains(string(buf[:n]), "attack-payload") {
			t.Errorf("the victim received ICMPv6 type %d with the attacker's payload: it passed the datapath", buf[0])
		}
	}
	drops, err := dp.Count(redirect.ReasonPolicyDenied)
	if err != nil {
		t.Fatal(err)
	}
	spoofed, err := dp.Count(redirect.ReasonSpoofed)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("drops: policy %d, spoofed %d", drops, spoofed)
}
