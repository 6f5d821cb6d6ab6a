// Package hostfw plays docs/host-firewall.md through wardd: a node (a
// network namespace with its own native device "eth0", a veth to an
// underlay bridge) whose host policies (nodeSelector) are enforced on that
// device, clients and servers in an "outside" namespace on the underlay,
// host-network servers and clients in the node's namespace, and a pod of
// the node. Nothing touches the machine's own devices.
package hostfw

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/agent/api"
	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/testenv"
)

func TestMain(m *testing.M) {
	node.AgentMain()
	os.Exit(m.Run())
}

var (
	underlayNet = netip.MustParsePrefix("172.30.7.0/24")
	nodeAddr    = netip.MustParseAddr("172.30.7.1")
	outsideAddr = netip.MustParseAddr("172.30.7.100")
)

// serve answers HTTP with name on each port of ns (a namespace's listener).
func serve(t *testing.T, listen func(network, addr string) (net.Listener, error), name string, ports ...int) {
	t.Helper()
	for _, p := range ports {
		ln, err := listen("tcp", fmt.Sprintf("0.0.0.0:%d", p))
		if err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf("%s:%d", name, p)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, body) }), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
}

// hostDNS is a host egress policy with DNS rules: the node may ask the
// outside's DNS server for allowed.test only.
const hostDNS = `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: host-dns
spec:
  nodeSelector:
    matchLabels: {node-access: ssh}
  egress:
  - toCIDR: [172.30.7.100/32]
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules:
        dns:
        - matchName: allowed.test
`

// serveDNS answers A queries in ns on :53/udp: allowed.test 192.0.2.1,
// denied.test 192.0.2.2.
func serveDNS(t *testing.T, ns *netns.Namespace) {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", ":53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	answers := map[string]string{"allowed.test.": "192.0.2.1", "denied.test.": "192.0.2.2"}
	srv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, q *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(q)
		if len(q.Question) == 1 {
			if ip, ok := answers[q.Question[0].Name]; ok {
				rr, err := mdns.NewRR(q.Question[0].Name + " 60 IN A " + ip)
				if err == nil {
					m.Answer = append(m.Answer, rr)
				}
			} else {
				m.Rcode = mdns.RcodeNameError
			}
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
}

// ping sends one ICMP echo request from ns to dst (a raw socket) and
// reports "reply" or "error" (no echo reply within a second).
func ping(ns *netns.Namespace, dst netip.Addr, id uint16) string {
	var c net.PacketConn
	if err := ns.Do(func() (err error) {
		c, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		return "error: " + err.Error()
	}
	defer c.Close()
	req := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), 0, 1, 'w', 'a', 'r', 'd'}
	var sum uint32
	for i := 0; i < len(req); i += 2 {
		sum += uint32(req[i])<<8 | uint32(req[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(req[2:], ^uint16(sum))
	if _, err := c.WriteTo(req, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return "error: " + err.Error()
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return "error"
		}
		// Echo reply (type 0) from dst with our identifier.
		if n >= 8 && buf[0] == 0 && from.String() == dst.String() && binary.BigEndian.Uint16(buf[4:]) == id {
			return "reply"
		}
	}
}

// docCommands returns the `ward bpf host-firewall <cmd>` lines of
// docs/host-firewall.md's sh blocks, by command.
func docCommands(t *testing.T) map[string][]string {
	t.Helper()
	f, err := os.Open(filepath.Join(testenv.Root(t), "docs", "host-firewall.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "```sh"):
			in = true
		case line == "```":
			in = false
		case in && strings.HasPrefix(line, "ward bpf host-firewall "):
			args := strings.Fields(line)[1:]
			out[args[2]] = args
		}
	}
	return out
}

// get decodes a document of wardd's status socket.
func get(t *testing.T, stateDir, path string, v any) {
	t.Helper()
	c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", filepath.Join(stateDir, api.Socket))
	}}}
	resp, err := c.Get("http://wardd" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// status reads wardd's status document.
func status(t *testing.T, stateDir string) api.Status {
	t.Helper()
	var st api.Status
	get(t, stateDir, api.StatusPath, &st)
	return st
}

// hostEndpoint is the host endpoint of `ward endpoint list` (the status
// socket's endpoint list).
func hostEndpoint(t *testing.T, stateDir string) api.EndpointDetail {
	t.Helper()
	var eps []api.EndpointDetail
	get(t, stateDir, api.EndpointsPath, &eps)
	for _, e := range eps {
		if e.ID == uint64(redirect.HostEndpointID) {
			return e
		}
	}
	t.Fatalf("endpoint list %+v has no host endpoint", eps)
	return api.EndpointDetail{}
}

func counted(t *testing.T, pin string, r redirect.Reason, dir redirect.Direction) uint64 {
	t.Helper()
	cs, err := redirect.PinnedCounters(pin)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Reason == r && c.Direction == dir {
			return c.Packets
		}
	}
	return 0
}

// TestHostFirewall plays docs/host-firewall.md: the seed's demo-host-policy
// (from outside only TCP 22), the seed's host policy ports example (22,
// 6443, ... on type=ingress-worker nodes) and a host egress policy (the
// cluster, and HTTPS to the world) on a node labelled like the seed's.
//   - Audit (hostFirewall.audit): nothing is dropped, the would-be drops
//     are counted as host-audit in both directions; ward status does not
//     flag the host policies as unenforced.
//   - `ward bpf host-firewall enforce`: 22 and 6443 answer from outside,
//     8080 is dropped; the host reaches the outside's 443 (its replies
//     pass), not its 8081; the node's pod still serves the outside and
//     reaches the outside's 8081 (host policies are not the pods').
//   - `ward bpf host-firewall off`: everything answers again.
func TestHostFirewall(t *testing.T) {
	testenv.RequireCommand(t, "curl")
	ward := testenv.File(t, "build/bin/ward", "run `make build`")
	cmds := docCommands(t)
	for _, c := range []string{"audit", "status", "enforce", "off"} {
		if cmds[c] == nil {
			t.Fatalf("docs/host-firewall.md has no `ward bpf host-firewall %s`", c)
		}
	}
	n := node.NewWith(t, node.Options{Namespace: true, Routes: []netip.Prefix{underlayNet}},
		node.PodSpec{Name: "app", Labels: map[string]string{"app": "web"}})
	underlay := n.Topo.NewNamespace(t, "under")
	outside := n.Topo.NewNamespace(t, "out")
	if _, err := netns.Connect(n.Topo.Host(), underlay, "n0", netip.PrefixFrom(nodeAddr, 24)); err != nil {
		t.Fatal(err)
	}
	if _, err := netns.Connect(outside, underlay, "o0", netip.PrefixFrom(outsideAddr, 24)); err != nil {
		t.Fatal(err)
	}
	if err := outside.IP("route", "add", n.Topo.Subnet.String(), "via", nodeAddr.String()); err != nil {
		t.Fatal(err)
	}

	serve(t, n.Topo.Host().Listen, "host", 22, 6443, 8080)
	serve(t, outside.Listen, "outside", 443, 8081)
	serveDNS(t, outside)
	n.Serve(t, "app", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "app:80") }), ":80")

	for _, f := range []string{"demo-host-policy.yaml", "host-policy-ports.yaml", "host-egress.yaml"} {
		b, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples", "host-firewall", f))
		if err != nil {
			t.Fatal(err)
		}
		n.WritePolicy(t, f, string(b))
	}
	n.WritePolicy(t, "host-dns.yaml", hostDNS)
	n.Config.Nodes = []agent.Node{{Name: n.Config.Node, Addresses: []string{nodeAddr.String()},
		Labels: map[string]string{"node-access": "ssh", "type": "ingress-worker"}}}
	n.Config.Datapath.Devices = []string{"eth0"}
	n.Config.HostFirewall = agent.HostFirewallConfig{Enabled: true, Audit: true}
	n.Start(t, 43000, 9743)
	pin := n.Config.Datapath.PinDir

	ctx, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	fromOutside := func(port int) string {
		out, err := outside.Run(ctx, "curl", "-s", "--connect-timeout", "2", "--max-time", "5", fmt.Sprintf("http://%s:%d/", nodeAddr, port))
		if err != nil {
			return "error"
		}
		return out
	}
	toOutside := func(port int) string { return n.HostCurl(ctx, fmt.Sprintf("http://%s:%d/", outsideAddr, port)) }
	// dig from the node's host namespace: the answer's address, or the
	// status when there is none.
	dig := func(name string) string {
		out, err := n.Topo.Host().Run(ctx, "dig", "@"+outsideAddr.String(), "+time=2", "+tries=1", name, "A")
		if err != nil {
			return "error"
		}
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 5 && f[3] == "A" && !strings.HasPrefix(l, ";") {
				return f[4]
			}
		}
		if i := strings.Index(out, "status: "); i >= 0 {
			return strings.TrimRight(strings.Fields(out[i+len("status: "):])[0], ",")
		}
		return out
	}
	run := func(args []string) string {
		t.Helper()
		// In the node's namespace, as on a node: device names are its own.
		out, err := n.Topo.Host().Command(ctx, ward, append(args, "-pin-dir", pin)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ward %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	type check struct {
		what string
		got  func() string
		want string
	}
	expect := func(phase string, cs []check) {
		t.Helper()
		for _, c := range cs {
			if got := c.got(); got != c.want {
				t.Errorf("%s: %s = %q; want %q", phase, c.what, got, c.want)
			}
		}
	}
	podChecks := []check{
		{"outside -> pod app:80", func() string {
			out, err := outside.Run(ctx, "curl", "-s", "--connect-timeout", "2", "--max-time", "5", "http://"+n.Pods["app"].IP.String()+"/")
			if err != nil {
				return "error"
			}
			return out
		}, "app:80"},
		{"pod app -> outside:8081", func() string { return n.Curl(ctx, "app", fmt.Sprintf("http://%s:8081/", outsideAddr)) }, "outside:8081"},
		// The host's ingress policy also decides local pods' flows to the
		// node: demo-host-policy allows the cluster.
		{"pod app -> host:8080", func() string { return n.Curl(ctx, "app", fmt.Sprintf("http://%s:8080/", nodeAddr)) }, "host:8080"},
		// ... and its egress policy the node's flows to its pods:
		// host-egress allows the cluster.
		{"host -> pod app:80", func() string { return n.HostCurl(ctx, "http://"+n.Pods["app"].IP.String()+"/") }, "app:80"},
	}

	for _, e := range status(t, n.StateDir).Errors {
		if strings.Contains(e, "nodeSelector") {
			t.Errorf("ward status flags host policies with the host firewall on: %s", e)
		}
	}

	// Audit: nothing dropped, would-be drops counted.
	run(cmds["audit"])
	if out := run(cmds["status"]); !strings.Contains(out, "ingress: audit") || !strings.Contains(out, "egress: audit") || !strings.Contains(out, "eth0") {
		t.Errorf("host-firewall status in audit mode:\n%s", out)
	}
	expect("audit", append([]check{
		{"outside -> host:22", func() string { return fromOutside(22) }, "host:22"},
		{"outside -> host:8080", func() string { return fromOutside(8080) }, "host:8080"},
		{"host -> outside:443", func() string { return toOutside(443) }, "outside:443"},
		{"host -> outside:8081", func() string { return toOutside(8081) }, "outside:8081"},
		{"host dig allowed.test", func() string { return dig("allowed.test") }, "192.0.2.1"},
		{"host dig denied.test (audited)", func() string { return dig("denied.test") }, "192.0.2.2"},
	}, podChecks...))
	if h := hostEndpoint(t, n.StateDir); h.Identity != 1 || !h.EnforceIngress || !h.EnforceEgress || !h.Audit || h.State != api.StateReady ||
		!slices.Contains(h.Labels, "reserved:host") || !slices.Contains(h.Labels, "k8s:node-access=ssh") {
		t.Errorf("host endpoint in audit mode: %+v; want identity 1, both directions enforced, audit, ready, labels reserved:host and k8s:node-access=ssh", h)
	}
	if in, out := counted(t, pin, redirect.ReasonHostAudit, redirect.Ingress), counted(t, pin, redirect.ReasonHostAudit, redirect.Egress); in == 0 || out == 0 {
		t.Errorf("audit mode counted %d ingress and %d egress would-be drops; want both > 0", in, out)
	}

	// Enforce.
	run(cmds["enforce"])
	if out := run(cmds["status"]); !strings.Contains(out, "ingress: enforced") || !strings.Contains(out, "egress: enforced") {
		t.Errorf("host-firewall status enforced:\n%s", out)
	}
	if h := hostEndpoint(t, n.StateDir); h.Audit {
		t.Errorf("host endpoint after enforce: %+v; want audit off", h)
	}
	denied := counted(t, pin, redirect.ReasonPolicyDenied, redirect.Ingress)
	expect("enforced", append([]check{
		{"outside -> host:22", func() string { return fromOutside(22) }, "host:22"},
		{"outside -> host:6443", func() string { return fromOutside(6443) }, "host:6443"},
		{"outside -> host:8080", func() string { return fromOutside(8080) }, "error"},
		{"outside ping host (icmps type 8)", func() string { return ping(outside, nodeAddr, 0x7701) }, "reply"},
		{"host -> outside:443", func() string { return toOutside(443) }, "outside:443"},
		{"host -> outside:8081", func() string { return toOutside(8081) }, "error"},
		{"host dig allowed.test", func() string { return dig("allowed.test") }, "192.0.2.1"},
		{"host dig denied.test", func() string { return dig("denied.test") }, "REFUSED"},
	}, podChecks...))
	if got := counted(t, pin, redirect.ReasonPolicyDenied, redirect.Ingress); got <= denied {
		t.Errorf("enforced: policy-denied ingress counter %d -> %d; want it to grow", denied, got)
	}

	// The emergency off switch.
	if out := run(cmds["off"]); !strings.Contains(out, "eth0") {
		t.Errorf("host-firewall off: %s", out)
	}
	expect("off", append([]check{
		{"outside -> host:8080", func() string { return fromOutside(8080) }, "host:8080"},
		{"host -> outside:8081", func() string { return toOutside(8081) }, "outside:8081"},
		{"host dig denied.test", func() string { return dig("denied.test") }, "192.0.2.2"},
	}, podChecks...))

	// Off lasts until wardd restarts; a restart with hostFirewall.audit
	// false enforces (the runtime override is reset), and so does the
	// next one (the pinned links are adopted); with hostFirewall.enabled
	// false the host firewall is detached.
	enforced := []check{
		{"outside -> host:22", func() string { return fromOutside(22) }, "host:22"},
		{"outside -> host:8080", func() string { return fromOutside(8080) }, "error"},
		{"host -> outside:8081", func() string { return toOutside(8081) }, "error"},
		{"host dig allowed.test", func() string { return dig("allowed.test") }, "192.0.2.1"},
	}
	n.Config.HostFirewall.Audit = false
	for _, phase := range []string{"restarted", "restarted again"} {
		n.Stop(t)
		n.Start(t, 43000, 9743)
		if out := run(cmds["status"]); !strings.Contains(out, "ingress: enforced") || !strings.Contains(out, "override: config") {
			t.Errorf("host-firewall status %s:\n%s", phase, out)
		}
		expect(phase, append(enforced, podChecks...))
	}
	n.Config.HostFirewall.Enabled = false
	n.Stop(t)
	n.Start(t, 43000, 9743)
	expect("host firewall disabled", []check{
		{"outside -> host:8080", func() string { return fromOutside(8080) }, "host:8080"},
		{"host -> outside:8081", func() string { return toOutside(8081) }, "outside:8081"},
	})
	if st := status(t, n.StateDir); !slices.ContainsFunc(st.Errors, func(e string) bool { return strings.Contains(e, "hostFirewall.enabled is false") }) {
		t.Errorf("ward status with the host firewall disabled: errors %q; want the host policies named as not enforced", st.Errors)
	}
}
