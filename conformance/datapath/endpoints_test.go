package datapath

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
)

const dynamicPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: landing}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tiefighter-egress}
spec:
  endpointSelector: {matchLabels: {class: tiefighter}}
  egress:
  - toEndpoints: [{matchLabels: {class: deathstar}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: POST, path: /v1/request-landing}]
`

// TestDynamicEndpoints: endpoints come and go through the watched
// endpoints directory without a restart — a pod added gets its identity,
// its policy in BPF and its own egress listener in Envoy; a pod whose
// interface does not exist yet is a per-endpoint status, not a failure;
// a pod removed loses its identity and its datapath entry.
func TestDynamicEndpoints(t *testing.T) {
	n := node.New(t,
		node.PodSpec{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}},
		node.PodSpec{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}, Unmanaged: true})
	n.Serve(t, "deathstar", deathstar.New(), ":80")
	n.WritePolicy(t, "policy.yaml", dynamicPolicy)
	epDir := filepath.Join(n.StateDir, "endpoints")
	if err := os.MkdirAll(epDir, 0o755); err != nil {
		t.Fatal(err)
	}
	n.Config.EndpointsDir = epDir
	n.Start(t, 27000, 9007)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	url := "http://" + n.Pods["deathstar"].IP.String()
	curl := func(method, path string) string {
		return n.Curl(c, "tiefighter", "-X", method, "-w", " %{http_code}", url+path)
	}
	// Not an endpoint yet: tiefighter's address is the world, dropped by
	// the Death Star's ingress policy.
	if got := curl("POST", "/v1/request-landing"); got != "error" {
		t.Fatalf("before tiefighter is an endpoint: POST = %q; want dropped", got)
	}
	tf := n.Pods["tiefighter"]
	writeEndpoint := func(file string, ep agent.Endpoint) {
		b, _ := json.Marshal(ep)
		if err := os.WriteFile(filepath.Join(epDir, file), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeEndpoint("tiefighter.json", agent.Endpoint{Name: "tiefighter", ID: 42, IPs: []string{tf.IP.String()},
		Labels: map[string]string{"org": "empire", "class": "tiefighter"}, Interface: tf.HostIf})
	writeEndpoint("ghost.json", agent.Endpoint{Name: "ghost", ID: 43, IPs: []string{"10.254.254.254"}, Labels: map[string]string{"org": "empire"}, Interface: "ward-no-such0"})
	// tiefighter's egress goes through its own (new) egress listener, whose
	// upstream carries its identity to the Death Star's L3/L4 ingress.
	node.Eventually(t, "the new endpoint's POST to land", func() bool {
		got := curl("POST", "/v1/request-landing")
		if got != "Ship landed 200" {
			t.Logf("POST = %q; status %+v %+v", got, n.Agent.Status().Endpoints, n.Agent.Status().EndpointFiles)
		}
		return got == "Ship landed 200"
	})
	if got := curl("PUT", "/v1/exhaust-port"); got != "Access denied 403" {
		t.Errorf("PUT /v1/exhaust-port = %q; want the tiefighter's egress 403", got)
	}
	if got := curl("GET", "/v1"); got != "Access denied 403" {
		t.Errorf("GET /v1 = %q; want the tiefighter's egress 403", got)
	}
	states := map[string]string{}
	for _, e := range n.Agent.Status().Endpoints {
		states[e.Name] = e.State
	}
	if states["tiefighter"] != "ready" || states["ghost"] != "waiting-for-interface" || states["deathstar"] != "ready" {
		t.Errorf("endpoint states = %v; want tiefighter and deathstar ready, ghost waiting-for-interface", states)
	}
	// A broken file is reported; its endpoints stay.
	if err := os.WriteFile(filepath.Join(epDir, "broken.yaml"), []byte("name: x\nid: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	node.Eventually(t, "the broken endpoint file in the status", func() bool { return len(n.Agent.Status().EndpointFiles) == 1 })
	os.Remove(filepath.Join(epDir, "broken.yaml"))
	// Removed: back to the world, dropped.
	if err := os.Remove(filepath.Join(epDir, "tiefighter.json")); err != nil {
		t.Fatal(err)
	}
	node.Eventually(t, "the removed endpoint to be dropped", func() bool { return curl("POST", "/v1/request-landing") == "error" })
}
