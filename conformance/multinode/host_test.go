package multinode

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/internal/testenv"
)

const probeDefaultDeny = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: probe-ingress
spec:
  endpointSelector:
    matchLabels: {app: probe}
  ingress:
  - fromEndpoints:
    - matchLabels: {org: empire}
`

const hostAndRemoteNode = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: node-health
spec:
  endpointSelector:
    matchLabels: {org: empire, class: deathstar}
  ingress:
  - fromEntities: [host, remote-node]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: GET
          path: /v1/healthz
`

// TestHostEndpoint: the node's own addresses carry the host identity and
// the other node's the remote-node identity (datapath.remoteNodes, which
// newCluster sets).
//   - Node B (allowLocalhost by default): a probe-like GET from its host
//     namespace to the Death Star's port 8080 answers although ingress is
//     default-deny there (tiefighter is dropped on it); fromEntities:
//     [host, remote-node] with an HTTP rule on port 80 sends the host's and
//     node A's requests through node B's Envoy: GET /v1/healthz 200, PUT
//     403.
//   - Node A (datapath.allowLocalhost: false): the same probe from its host
//     to its pod is dropped, while an allowed pod still gets through.
func TestHostEndpoint(t *testing.T) {
	c := newCluster(t,
		[]node.PodSpec{
			{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
			{Name: "probe", Labels: map[string]string{"app": "probe"}},
		},
		[]node.PodSpec{{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}}},
	)
	a, b := c.nodes[0], c.nodes[1]
	a.Serve(t, "probe", deathstar.New(), ":80")
	b.Serve(t, "deathstar", deathstar.New(), ":80", ":8080")
	pol, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b.WritePolicy(t, "policy.yaml", string(pol))
	b.WritePolicy(t, "node-health.yaml", hostAndRemoteNode)
	a.WritePolicy(t, "probe.yaml", probeDefaultDeny)
	off := false
	a.Config.Datapath.AllowLocalhost = &off
	a.Start(t, 37600, 9706)
	b.Start(t, 37700, 9707)

	ctx, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	ds := "http://" + b.Pods["deathstar"].IP.String()
	hostCurl := func(n *node.Node, method, url string) string {
		return n.HostCurl(ctx, "-X", method, "-w", " %{http_code}", url)
	}

	// Node B's host: allow-localhost on a port no rule opens to it.
	if got := hostCurl(b, "GET", ds+":8080/v1/healthz"); !strings.HasSuffix(got, " 200") {
		t.Errorf("node B host GET deathstar:8080/v1/healthz = %q; want 200 (allow-localhost)", got)
	}
	if got := a.Curl(ctx, "tiefighter", "-w", " %{http_code}", ds+":8080/v1/healthz"); got != "error" {
		t.Errorf("tiefighter GET deathstar:8080 = %q; want dropped (ingress is default-deny there)", got)
	}
	// Node B's host through Envoy (fromEntities: [host] with HTTP rules).
	node.Eventually(t, "node B's Envoy to deny its host's PUT", func() bool {
		return hostCurl(b, "PUT", ds+"/v1/exhaust-port") == "Access denied 403"
	})
	if got := hostCurl(b, "GET", ds+"/v1/healthz"); !strings.HasSuffix(got, " 200") || !strings.Contains(got, "ok") {
		t.Errorf("node B host GET deathstar/v1/healthz = %q; want 200 through Envoy", got)
	}
	// Node A's host is a remote node for node B.
	if got := hostCurl(a, "GET", ds+"/v1/healthz"); !strings.HasSuffix(got, " 200") {
		t.Errorf("node A host GET deathstar/v1/healthz = %q; want 200 (remote-node)", got)
	}
	if got := hostCurl(a, "PUT", ds+"/v1/exhaust-port"); got != "Access denied 403" {
		t.Errorf("node A host PUT deathstar/v1/exhaust-port = %q; want Access denied 403 from node B's Envoy", got)
	}

	// Node A: allowLocalhost off.
	probe := "http://" + a.Pods["probe"].IP.String() + "/v1/healthz"
	if got := a.Curl(ctx, "tiefighter", "-w", " %{http_code}", probe); !strings.HasSuffix(got, " 200") {
		t.Errorf("tiefighter GET probe = %q; want 200", got)
	}
	if got := hostCurl(a, "GET", probe); got != "error" {
		t.Errorf("node A host GET probe with allowLocalhost false = %q; want dropped", got)
	}
}
