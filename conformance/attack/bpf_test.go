// Attacks on the eBPF datapath from a hostile pod (issue 12), each through
// the node agent (wardd's code) over real network namespaces: the
// attacker has CAP_NET_RAW in its pod (the test is root) and sends what it
// likes. Every test here failed against the datapath before the fixes of
// issue 12 (see each test's comment).
package attack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/conformance/node"
)

var pods = []node.PodSpec{
	{Name: "attacker", Labels: map[string]string{"app": "attacker"}},
	{Name: "victim", Labels: map[string]string{"app": "victim"}},
	{Name: "bystander", Labels: map[string]string{"app": "bystander"}},
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// udpFrame builds an Ethernet frame carrying IPv4/UDP from src to
// dst:dport, behind VLAN tags (TPIDs outermost first, VLAN id 0).
func udpFrame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, dport uint16, payload string, tpids ...uint16) []byte {
	f := append(append([]byte{}, dstMAC...), srcMAC...)
	for _, tp := range tpids {
		f = binary.BigEndian.AppendUint16(f, tp)
		f = binary.BigEndian.AppendUint16(f, 0)
	}
	f = binary.BigEndian.AppendUint16(f, 0x0800)
	ip := make([]byte, 20+8+len(payload))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip[:20]))
	binary.BigEndian.PutUint16(ip[20:], 40000)
	binary.BigEndian.PutUint16(ip[22:], dport)
	binary.BigEndian.PutUint16(ip[24:], uint16(8+len(payload)))
	copy(ip[28:], payload)
	return append(f, ip...)
}

// sendRaw sends frames, in order, from an AF_PACKET socket on the pod's
// eth0 (what a process with CAP_NET_RAW in the pod can do). The sending
// thread is pinned to one CPU, so every frame (and whatever the host
// forwards of it) is queued on that CPU's backlog and processed in order:
// a datagram sent after others arrives after those that arrive at all.
func sendRaw(t *testing.T, p *netns.Pod, frames ...[]byte) {
	t.Helper()
	err := p.Do(func() error {
		var all, one unix.CPUSet
		if err := unix.SchedGetaffinity(0, &all); err != nil {
			return fmt.Errorf("cpu affinity: %w", err)
		}
		one.Set(0)
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			return fmt.Errorf("pin to one CPU: %w", err)
		}
		defer unix.SchedSetaffinity(0, &all)
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		for _, f := range frames {
			sa := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Protocol: binary.BigEndian.Uint16(f[12:14])}
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				return fmt.Errorf("sendto: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

const attackerEgressUDP = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: attacker-egress}
spec:
  endpointSelector: {matchLabels: {app: attacker}}
  egress:
  - toEndpoints: [{matchLabels: {app: victim}}]
    toPorts:
    - ports: [{port: "9998", protocol: UDP}]
`

// TestAttackQinQSpoofedSource: the attacker may only send UDP to the
// victim's port 9998. From a raw socket it sends double VLAN-0 (and QinQ
// 802.1ad) tagged IPv4 to the victim's port 9999, as itself and as the
// bystander. The kernel strips the outer tag before tc; the datapath used
// to see ethertype 0x8100, call it "not IP" and pass it, and the stack
// then stripped the inner tag and routed the packet: egress policy and the
// source check bypassed. Now every tagged frame is dropped in tc. An
// allowed untagged datagram sent after them, on the same socket, shows the
// path works and that the tagged ones had their chance to arrive.
func TestAttackQinQSpoofedSource(t *testing.T) {
	n := node.New(t, pods...)
	n.WritePolicy(t, "attacker.yaml", attackerEgressUDP)
	n.Start(t, 27000, 9107)
	att, vic, bys := n.Pods["attacker"], n.Pods["victim"], n.Pods["bystander"]
	allowed, err := vic.ListenPacket("udp4", ":9998")
	if err != nil {
		t.Fatal(err)
	}
	defer allowed.Close()
	target, err := vic.ListenPacket("udp4", ":9999")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()

	frame := func(src netip.Addr, port uint16, payload string, tpids ...uint16) []byte {
		return udpFrame(att.HostMAC, att.PodMAC, src, vic.IP, port, payload, tpids...)
	}
	sendRaw(t, att,
		frame(bys.IP, 9999, "qinq spoofed", 0x8100, 0x8100),
		frame(att.IP, 9999, "qinq own", 0x8100, 0x8100),
		frame(bys.IP, 9999, "802.1ad spoofed", 0x88a8, 0x8100),
		frame(bys.IP, 9999, "802.1q spoofed", 0x8100),
		frame(att.IP, 9999, "untagged denied port"),
		frame(bys.IP, 9998, "untagged spoofed"),
		frame(att.IP, 9998, "canary"),
	)
	buf := make([]byte, 1500)
	allowed.SetReadDeadline(time.Now().Add(30 * time.Second)) // bounds a broken path, not a timing assertion
	nr, from, err := allowed.ReadFrom(buf)
	if err != nil {
		t.Fatalf("the allowed canary did not arrive: %v", err)
	}
	if got := string(buf[:nr]); got != "canary" {
		t.Errorf("port 9998 received %q from %v first; want the canary (a spoofed datagram passed)", got, from)
	}
	for {
		nr, from, ok := queued(t, target.(*net.UDPConn), buf)
		if !ok {
			break
		}
		t.Errorf("port 9999 received %q from %v: a tagged or denied frame bypassed the datapath", buf[:nr], from)
	}
}

// queued reads a datagram already in the socket's queue, without waiting.
func queued(t *testing.T, c *net.UDPConn, buf []byte) (int, unix.Sockaddr, bool) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var (
		n    int
		from unix.Sockaddr
		rerr error
	)
	if err := rc.Read(func(fd uintptr) bool {
		n, from, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if errors.Is(rerr, unix.EAGAIN) {
		return 0, nil, false
	}
	if rerr != nil {
		t.Fatal(rerr)
	}
	return n, from, true
}

const attackerWideDeny = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: attacker-egress}
spec:
  endpointSelector: {matchLabels: {app: attacker}}
  egress:
  - toEndpoints: [{matchLabels: {app: victim}}]
  egressDeny:
  - toEndpoints: [{matchLabels: {app: victim}}]
    toPorts:
    - ports: [{port: "1024", endPort: 65535, protocol: TCP}]
`

func serveText(t *testing.T, n *node.Node, pod, body string, ports ...string) {
	n.Serve(t, pod, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	}), ports...)
}

// TestAttackWideDenyRange: an egressDeny on 1024-65535 is enforced. It
// used to make the policy-map translation fail (ranges over 4096 ports),
// and the agent then skipped the endpoint's whole write: nothing was
// enforced.
func TestAttackWideDenyRange(t *testing.T) {
	n := node.New(t, pods...)
	serveText(t, n, "victim", "reached", ":80", ":5000", ":65000")
	n.WritePolicy(t, "attacker.yaml", attackerWideDeny)
	n.Start(t, 27100, 9108)
	c, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	url := "http://" + n.Pods["victim"].IP.String()
	if got := n.Curl(c, "attacker", url+":80/"); got != "reached" {
		t.Fatalf("attacker -> victim:80 = %q; want reached (allowed below the deny range)", got)
	}
	for _, port := range []string{":5000", ":65000"} {
		if got := n.Curl(c, "attacker", url+port+"/"); got != "error" {
			t.Errorf("attacker -> victim%s = %q; want dropped by the egressDeny 1024-65535", port, got)
		}
	}
}

const attackerL4 = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: attacker-egress}
spec:
  endpointSelector: {matchLabels: {app: attacker}}
  egress:
  - toEndpoints: [{matchLabels: {app: victim}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`

const attackerL7 = attackerL4 + `      rules:
        http:
        - method: GET
          path: /public
`

const attackerRevoked = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: attacker-egress}
spec:
  endpointSelector: {matchLabels: {app: attacker}}
  egress:
  - toEndpoints: [{matchLabels: {app: victim}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
`

// getFrom sends GET path to addr from the attacker's fixed local port
// (SO_REUSEADDR) and returns the status line, or "error". The server
// closes first (Connection: close), so the attacker's end leaves no
// TIME_WAIT and the next call reuses the exact 5-tuple.
func getFrom(ctx context.Context, p *netns.Pod, lport int, addr, path string) string {
	var conn net.Conn
	err := p.Do(func() error {
		d := net.Dialer{
			Timeout:   3 * time.Second,
			LocalAddr: &net.TCPAddr{IP: p.IP.AsSlice(), Port: lport},
			Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				if err := c.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
				}); err != nil {
					return err
				}
				return serr
			},
		}
		var err error
		conn, err = d.DialContext(ctx, "tcp4", addr)
		return err
	})
	if err != nil {
		return "error"
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: victim\r\nConnection: close\r\n\r\n", path)
	b, err := io.ReadAll(conn)
	if err != nil && !errors.Is(err, io.EOF) && len(b) == 0 {
		return "error"
	}
	line, _, _ := strings.Cut(string(b), "\r\n")
	return line
}

// TestAttackTupleReuseAfterPolicyChange: conntrack entries used to live
// forever and never be re-checked, so a new connection reusing a
// once-allowed 5-tuple passed as established: after an L7 redirect was
// added it went around Envoy, and after a revocation it still connected.
// Now a flow decided under an older policy is decided again.
func TestAttackTupleReuseAfterPolicyChange(t *testing.T) {
	n := node.New(t, pods...)
	serveText(t, n, "victim", "secret", ":80")
	n.WritePolicy(t, "attacker.yaml", attackerL4)
	n.Start(t, 27200, 9109)
	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	att := n.Pods["attacker"]
	addr := netip.AddrPortFrom(n.Pods["victim"].IP, 80).String()
	url := "http://" + addr
	const lport = 41234

	node.Eventually(t, "the L4-allowed GET /secret from the fixed port", func() bool {
		return getFrom(c, att, lport, addr, "/secret") == "HTTP/1.1 200 OK"
	})

	n.WritePolicy(t, "attacker.yaml", attackerL7)
	node.Eventually(t, "the L7 rule to apply to new connections", func() bool {
		return n.Curl(c, "attacker", "-w", " %{http_code}", url+"/secret") == "Access denied 403"
	})
	if got := getFrom(c, att, lport, addr, "/secret"); got != "HTTP/1.1 403 Forbidden" {
		t.Errorf("GET /secret on the reused tuple after an L7 rule was added = %q; want 403 from Envoy", got)
	}

	n.WritePolicy(t, "attacker.yaml", attackerRevoked)
	node.Eventually(t, "the revocation to apply to new connections", func() bool {
		return n.Curl(c, "attacker", url+"/public") == "error"
	})
	if got := getFrom(c, att, lport, addr, "/secret"); got != "error" {
		t.Errorf("GET /secret on the reused tuple after the revocation = %q; want dropped", got)
	}
}
