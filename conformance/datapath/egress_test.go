package datapath

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"testing"
	"time"

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
      rules:
        http:
        - method: POST
          path: /v1/request-landing
`

// TestWarddEgressHTTP: an egress HTTP policy of the tiefighter, enforced by
// Envoy on the tiefighter's own egress listener: BPF redirects its port-80
// traffic there, ward.http applies the rules, and the upstream connection
// (marked with the tiefighter's identity) reaches the Death Star; other
// ports are dropped by the egress default deny.
func TestWarddEgressHTTP(t *testing.T) {
	n := node.New(t,
		node.PodSpec{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}},
		node.PodSpec{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}})
	n.Serve(t, "deathstar", deathstar.New(), ":80", ":8080")
	n.WritePolicy(t, "egress.yaml", tiefighterEgress)
	n.Start(t, 24000, 9004)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	curl := func(method, port, path string) string {
		return n.Curl(c, "tiefighter", "-X", method, "-w", " %{http_code}", "http://"+n.Pods["deathstar"].IP.String()+port+path)
	}
	node.Eventually(t, "Envoy to deny the tiefighter's PUT on its egress listener", func() bool {
		return curl("PUT", "", "/v1/exhaust-port") == "Access denied 403"
	})
	if got := curl("POST", "", "/v1/request-landing"); got != "Ship landed 200" {
		t.Errorf("POST /v1/request-landing = %q; want Ship landed 200 through the egress proxy", got)
	}
	if got := curl("GET", ":8080", "/"); got != "error" {
		t.Errorf("GET :8080 = %q; want dropped by the egress default deny", got)
	}
}

// TestWarddEgressAndIngressHTTP: the source has egress HTTP rules and the
// destination, on the same node, ingress HTTP rules. The egress proxy's
// upstream cannot be handed to the ingress proxy (it would see the node's
// address), so ward.http on the egress listener applies the destination's
// ingress rules too, with the source's identity, and marks its upstream
// so: a request both allow lands, one only the egress rules allow is
// denied by the ingress rules, one the egress rules deny never leaves.
// Before, every such request was dropped in BPF (fail closed).
func TestWarddEgressAndIngressHTTP(t *testing.T) {
	n := node.New(t,
		node.PodSpec{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}},
		node.PodSpec{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}})
	n.Serve(t, "deathstar", deathstar.New(), ":80")
	n.WritePolicy(t, "egress.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tiefighter-egress}
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
	n.WritePolicy(t, "ingress.yaml", `apiVersion: cilium.io/v2
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
	n.Start(t, 39960, 9798)
	c, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	curl := func(method, path string) string {
		return n.Curl(c, "tiefighter", "-X", method, "-m", "10", "-w", " %{http_code}", "http://"+n.Pods["deathstar"].IP.String()+path)
	}
	node.Eventually(t, "the POST both allow to land", func() bool { return curl("POST", "/v1/request-landing") == "Ship landed 200" })
	if got := curl("GET", "/v1/"); got != "Access denied 403" {
		t.Errorf("GET /v1/ (egress allows, ingress does not) = %q; want Access denied 403", got)
	}
	if got := curl("PUT", "/v1/exhaust-port"); got != "Access denied 403" {
		t.Errorf("PUT (egress denies) = %q; want Access denied 403", got)
	}
}

// TestEgressProxyOriginalSource: a request through the client's egress
// HTTP proxy reaches the server from the client's own address (Envoy's
// original_src), and the answer finds its way back to the proxy's socket
// (the proxy routing's socket mark). Before, the server saw the node's
// address.
func TestEgressProxyOriginalSource(t *testing.T) {
	n := node.New(t,
		node.PodSpec{Name: "server", Labels: map[string]string{"app": "server"}},
		node.PodSpec{Name: "client", Labels: map[string]string{"app": "client"}})
	n.Serve(t, "server", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.RemoteAddr)
	}), ":80")
	n.WritePolicy(t, "egress.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /from}]
`)
	n.Start(t, 49800, 9498)
	c, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	url := "http://" + n.Pods["server"].IP.String()
	var got string
	node.Eventually(t, "GET /from through the egress proxy", func() bool {
		got = n.Curl(c, "client", "-m", "10", url+"/from")
		return got != "error"
	})
	ap, err := netip.ParseAddrPort(got)
	if err != nil {
		t.Fatalf("the server saw %q: %v", got, err)
	}
	if ap.Addr() != n.Pods["client"].IP {
		t.Errorf("the server saw the request from %s; want the client's address %s", ap.Addr(), n.Pods["client"].IP)
	}
	if got := n.Curl(c, "client", "-m", "10", "-w", " %{http_code}", url+"/other"); got != "Access denied 403" {
		t.Errorf("GET /other = %q; want Access denied 403", got)
	}
}
