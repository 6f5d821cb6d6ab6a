package multinode

import (
	"context"
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
