package multinode

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
)

const tiefighterEgress = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: tiefighter-egress
spec:
  endpointSelector:
    matchLabels: {class: tiefighter}
  egress:
  - toEndpoints:
    - matchLabels: {class: deathstar}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`

// TestEgressAtSourceNode: cross-node traffic is enforced at L3/L4 on
// egress at the source node. tiefighter (node A) may reach the Death Star
// (node B, no policy there) on port 80 only: port 8080 is dropped by node
// A's datapath (its egress policy-denied counter), never reaching node B.
func TestEgressAtSourceNode(t *testing.T) {
	c := newCluster(t,
		[]node.PodSpec{{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}}},
		[]node.PodSpec{{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}}},
	)
	a, b := c.nodes[0], c.nodes[1]
	b.Serve(t, "deathstar", deathstar.New(), ":80", ":8080")
	a.WritePolicy(t, "egress.yaml", tiefighterEgress)
	a.Start(t, 38200, 9712)
	b.Start(t, 38300, 9713)

	ctx, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	url := "http://" + b.Pods["deathstar"].IP.String()
	node.Eventually(t, "tiefighter (node A) to reach deathstar:80 on node B", func() bool {
		return strings.HasSuffix(a.Curl(ctx, "tiefighter", "-w", " %{http_code}", url+"/v1/healthz"), " 200")
	})
	denied := func(n *node.Node) uint64 {
		cs, err := redirect.PinnedCounters(n.Config.Datapath.PinDir)
		if err != nil {
			t.Fatal(err)
		}
		var sum uint64
		for _, ctr := range cs {
			if ctr.Reason == redirect.ReasonPolicyDenied && ctr.Direction == redirect.Egress {
				sum += ctr.Packets
			}
		}
		return sum
	}
	before := denied(a)
	if got := a.Curl(ctx, "tiefighter", "-w", " %{http_code}", url+":8080/v1/healthz"); got != "error" {
		t.Errorf("tiefighter (node A) -> deathstar:8080 = %q; want dropped by node A's egress policy", got)
	}
	if got := denied(a); got <= before {
		t.Errorf("node A egress policy-denied = %d; want > %d (dropped at the source node)", got, before)
	}
	if got := b.HostCurl(ctx, "-w", " %{http_code}", url+":8080/v1/healthz"); !strings.HasSuffix(got, " 200") {
		t.Errorf("node B host -> deathstar:8080 = %q; want 200 (node B enforces nothing there)", got)
	}
}

// TestEgressL7AcrossNodes: tiefighter (node A) has egress HTTP rules, so
// its requests go through node A's egress proxy; the Death Star (node B)
// admits only org=empire at L3 and POST /v1/request-landing at L7. The
// egress proxy's upstream leaves from tiefighter's own address (Envoy's
// original_src; the replies reach the proxy by the proxy routing's
// socket mark), so node B sees tiefighter's identity: the POST both allow
// lands, a GET node A's rules allow is answered 403 by node B's Envoy, a
// PUT node A's rules deny is answered 403 by node A's. Before, node B saw
// node A's address (remote-node) and dropped every one of them.
func TestEgressL7AcrossNodes(t *testing.T) {
	c := newCluster(t,
		[]node.PodSpec{{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}}},
		[]node.PodSpec{{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}}},
	)
	a, b := c.nodes[0], c.nodes[1]
	b.Serve(t, "deathstar", deathstar.New(), ":80")
	a.WritePolicy(t, "egress.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tiefighter-egress-l7}
spec:
  endpointSelector: {matchLabels: {class: tiefighter}}
  egress:
  - toEndpoints: [{matchLabels: {class: deathstar}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: POST
          path: /v1/request-landing
        - method: GET
`)
	b.WritePolicy(t, "ingress.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deathstar-ingress}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: POST
          path: /v1/request-landing
`)
	a.Start(t, 49600, 9496)
	b.Start(t, 49700, 9497)

	ctx, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	url := "http://" + b.Pods["deathstar"].IP.String()
	curl := func(method, path string) string {
		return a.Curl(ctx, "tiefighter", "-X", method, "-m", "10", "-w", " %{http_code}", url+path)
	}
	node.Eventually(t, "tiefighter's POST through both proxies to land", func() bool {
		return curl("POST", "/v1/request-landing") == "Ship landed 200"
	})
	if got := curl("GET", "/v1/"); got != "Access denied 403" {
		t.Errorf("GET /v1/ (node A allows, node B's ingress does not) = %q; want Access denied 403 from node B", got)
	}
	if got := curl("PUT", "/v1/exhaust-port"); got != "Access denied 403" {
		t.Errorf("PUT (node A's egress denies) = %q; want Access denied 403", got)
	}
}

// TestEgressL7ToWorldMasqueraded: node A masquerades its pods' traffic to
// the world (iptables MASQUERADE, as a node without routes back to its
// pods does), and the world has no route to node A's pods. tiefighter's
// egress proxy upstream leaves from tiefighter's address and is
// masqueraded on the way out; the world's answers, addressed to node A,
// are matched to the proxy's socket through conntrack's original tuple
// (the proxy routing's socket mark) before the NAT is undone, so the
// allowed GET is answered and the denied one gets the egress proxy's 403.
func TestEgressL7ToWorldMasqueraded(t *testing.T) {
	c := newCluster(t,
		[]node.PodSpec{{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}}},
		[]node.PodSpec{{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}}},
	)
	a := c.nodes[0]
	ln, err := c.world.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "world %s from %s", r.URL.Path, strings.Split(r.RemoteAddr, ":")[0])
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	if err := c.world.IP("route", "del", a.Topo.Subnet.String()); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	if out, err := a.Topo.Host().Command(ctx, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", a.Topo.Subnet.String(),
		"-d", c.worldIP.String()+"/32", "-j", "MASQUERADE").CombinedOutput(); err != nil {
		t.Fatalf("iptables MASQUERADE: %v: %s", err, out)
	}
	a.WritePolicy(t, "egress.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tiefighter-to-world}
spec:
  endpointSelector: {matchLabels: {class: tiefighter}}
  egress:
  - toEntities: [world]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /allowed}]
`)
	a.Start(t, 49900, 9499)
	url := "http://" + c.worldIP.String()
	curl := func(path string) string {
		return a.Curl(ctx, "tiefighter", "-m", "10", "-w", " %{http_code}", url+path)
	}
	want := fmt.Sprintf("world /allowed from %s 200", c.addrs[0])
	node.Eventually(t, "the masqueraded GET /allowed through the egress proxy", func() bool { return curl("/allowed") == want })
	if got := curl("/denied"); got != "Access denied 403" {
		t.Errorf("GET /denied = %q; want Access denied 403 from the egress proxy", got)
	}
}
