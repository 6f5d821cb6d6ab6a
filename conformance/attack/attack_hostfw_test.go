package attack

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/testenv"
)

// hostOnlySSH is a host policy: the node's ingress allows TCP 22 from the
// world and only 8082 from the cluster (its pods).
const hostOnlySSH = `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host-only-ssh}
spec:
  nodeSelector: {matchLabels: {node-access: ssh}}
  ingress:
  - fromEntities: [world]
    toPorts:
    - ports: [{port: "22", protocol: TCP}]
  - fromEntities: [cluster]
    toPorts:
    - ports: [{port: "8082", protocol: TCP}]
`

// attackerToHost is the attacker's own egress policy (a tenant writes its
// namespace's policies): the host's 8080 and 8082 with an HTTP rule (its
// flows go through Envoy), 8081 at L4.
const attackerToHost = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: attacker-to-host}
spec:
  endpointSelector: {matchLabels: {app: attacker}}
  egress:
  - toEntities: [host]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}, {port: "8082", protocol: TCP}]
      rules:
        http: [{method: GET}]
  - toEntities: [host]
    toPorts:
    - ports: [{port: "8081", protocol: TCP}]
`

// TestAttackHostFirewallFromPod: a pod reaches none of the node's ports
// the host policy denies it, whatever its own egress policy says: neither
// at L4 nor through an egress L7 rule (the proxy's upstream connection to
// the node never crosses a pod's veth or a native device, so the host
// firewall must decide the pod's flow before it is redirected), at the
// node's address on its native device and at its address on the pods'
// veths. The host-network server listens on every address. A user that
// is not root cannot turn the host firewall off.
func TestAttackHostFirewallFromPod(t *testing.T) {
	underlay := netip.MustParsePrefix("172.30.9.0/24")
	nodeAddr := netip.MustParseAddr("172.30.9.1")
	n := node.NewWith(t, node.Options{Namespace: true, Routes: []netip.Prefix{underlay}},
		node.PodSpec{Name: "attacker", Labels: map[string]string{"app": "attacker"}})
	under := n.Topo.NewNamespace(t, "under")
	if _, err := netns.Connect(n.Topo.Host(), under, "n0", netip.PrefixFrom(nodeAddr, 24)); err != nil {
		t.Fatal(err)
	}
	for _, port := range []int{22, 8080, 8081, 8082} {
		ln, err := n.Topo.Host().Listen("tcp", fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf("host:%d", port)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, body) }), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	n.WritePolicy(t, "host.yaml", hostOnlySSH)
	n.WritePolicy(t, "attacker.yaml", attackerToHost)
	n.Config.Nodes = []agent.Node{{Name: n.Config.Node, Addresses: []string{nodeAddr.String()}, Labels: map[string]string{"node-access": "ssh"}}}
	n.Config.Datapath.Devices = []string{"eth0"}
	n.Config.HostFirewall = agent.HostFirewallConfig{Enabled: true}
	n.Start(t, 39510, 9731)

	ctx, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	get := func(url string) string {
		out, err := n.Pods["attacker"].Run(ctx, "curl", "-sS", "--connect-timeout", "2", "--max-time", "5", "-w", " %{http_code}", url)
		if err != nil {
			return "error"
		}
		return strings.Join(strings.Fields(out), " ")
	}
	// The policies in force: on 8082, which the host allows the cluster,
	// the pod's egress L7 rule answers a denied method itself (Envoy is
	// on the path) and passes GET.
	node.Eventually(t, "the attacker's egress L7 rule in force", func() bool {
		out, _ := n.Pods["attacker"].Run(ctx, "curl", "-sS", "-X", "POST", "--connect-timeout", "2", "--max-time", "5", "-w", " %{http_code}", fmt.Sprintf("http://%s:8082/", nodeAddr))
		return strings.Join(strings.Fields(out), " ") == deniedAnswer
	})
	if got, want := get(fmt.Sprintf("http://%s:8082/", nodeAddr)), "host:8082 200"; got != want {
		t.Errorf("attacker GET the host's 8082 = %q; want %q (host and egress policies allow it)", got, want)
	}
	// A user of the node that is not root cannot turn the host firewall
	// off (the pinned maps and links are root's).
	ward := testenv.File(t, "build/bin/ward", "run `make build`")
	testenv.RequireCommand(t, "setpriv")
	if out, err := n.Topo.Host().Command(ctx, "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
		ward, "bpf", "host-firewall", "off", "-pin-dir", n.Config.Datapath.PinDir).CombinedOutput(); err == nil {
		t.Errorf("ward bpf host-firewall off as uid 65534 succeeded: %s", out)
	} else if !strings.Contains(string(out), "permission denied") && !strings.Contains(string(out), "operation not permitted") {
		t.Errorf("ward bpf host-firewall off as uid 65534: %v %s; want a permission error", err, out)
	}
	for _, addr := range []netip.Addr{nodeAddr, n.Topo.HostIP} {
		for _, port := range []int{8080, 8081} {
			url := fmt.Sprintf("http://%s:%d/", addr, port)
			if got := get(url); got != "error" && got != deniedAnswer {
				t.Errorf("attacker GET %s = %q; want it refused (the host policy denies the cluster)", url, got)
			}
		}
	}
}
