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

const worldLanding = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: world-landing
spec:
  endpointSelector:
    matchLabels: {org: empire, class: deathstar}
  ingress:
  - fromEntities: [world]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: POST
          path: /v1/request-landing
`

// TestDeathstarAcrossNodes is the seed's Star Wars demo across nodes:
// tiefighter and xwing on node A, the Death Star on node B. Node B's BPF
// hands tiefighter's port-80 flows, which arrive on its native device, to
// node B's Envoy (the hairpin): POST is answered 200 by the Death Star,
// PUT 403 by node B's Envoy; xwing is dropped at L3. From the world
// namespace, the Death Star is dropped until a fromEntities: [world] rule
// sends the world's port 80 through Envoy too.
func TestDeathstarAcrossNodes(t *testing.T) {
	c := newCluster(t,
		[]node.PodSpec{
			{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
			{Name: "xwing", Labels: map[string]string{"org": "alliance", "class": "xwing"}},
		},
		[]node.PodSpec{{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}}},
	)
	a, b := c.nodes[0], c.nodes[1]
	b.Serve(t, "deathstar", deathstar.New(), ":80")
	pol, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		n.WritePolicy(t, "policy.yaml", string(pol))
	}
	a.Start(t, 37400, 9704)
	b.Start(t, 37500, 9705)

	ctx, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	url := "http://" + b.Pods["deathstar"].IP.String()
	curl := func(from, method, path string) string {
		return a.Curl(ctx, from, "-X", method, "-w", " %{http_code}", url+path)
	}
	node.Eventually(t, "node B's Envoy to deny tiefighter's PUT from node A", func() bool {
		return curl("tiefighter", "PUT", "/v1/exhaust-port") == "Access denied 403"
	})
	if got := curl("tiefighter", "POST", "/v1/request-landing"); got != "Ship landed 200" {
		t.Errorf("tiefighter (node A) POST = %q; want Ship landed 200", got)
	}
	if got := curl("xwing", "POST", "/v1/request-landing"); got != "error" {
		t.Errorf("xwing (node A) POST = %q; want dropped", got)
	}

	world := func(method, path string) string {
		out, err := c.world.Run(ctx, "curl", "-s", "--connect-timeout", "2", "--max-time", "5", "-X", method, "-w", " %{http_code}", url+path)
		if err != nil {
			return "error"
		}
		return strings.Join(strings.Fields(out), " ")
	}
	if got := world("POST", "/v1/request-landing"); got != "error" {
		t.Errorf("world POST without a world rule = %q; want dropped", got)
	}
	b.WritePolicy(t, "world.yaml", worldLanding)
	node.Eventually(t, "node B's Envoy to answer the world's POST", func() bool {
		return world("POST", "/v1/request-landing") == "Ship landed 200"
	})
	if got := world("PUT", "/v1/exhaust-port"); got != "Access denied 403" {
		t.Errorf("world PUT = %q; want Access denied 403 from node B's Envoy", got)
	}
}
