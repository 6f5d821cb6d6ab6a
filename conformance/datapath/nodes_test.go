package datapath

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/conformance/node"
)

// TestFromNodes is the seed's fromNodes example (enable-node-selector-
// labels): prod endpoints accept traffic only from control-plane nodes;
// another node is dropped, and fromEntities: [remote-node] still selects
// every node.
func TestFromNodes(t *testing.T) {
	n := node.New(t,
		node.PodSpec{Name: "prod", Labels: map[string]string{"env": "prod"}},
		// Stand-ins for two other nodes of the cluster (their addresses).
		node.PodSpec{Name: "cp-1", Unmanaged: true},
		node.PodSpec{Name: "worker-1", Unmanaged: true})
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	n.Serve(t, "prod", ok, ":80", ":10250")
	n.WritePolicy(t, "policy.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-control-plane}
spec:
  endpointSelector: {matchLabels: {env: prod}}
  ingress:
  - fromNodes:
    - matchLabels: {node-role.kubernetes.io/control-plane: ""}
  - fromEntities: [remote-node]
    toPorts: [{ports: [{port: "10250", protocol: TCP}]}]
`)
	n.Config.EnableNodeSelectorLabels = true
	n.Config.Nodes = []agent.Node{
		{Name: "cp-1", Addresses: []string{n.Pods["cp-1"].IP.String()}, Labels: map[string]string{"node-role.kubernetes.io/control-plane": ""}},
		{Name: "worker-1", Addresses: []string{n.Pods["worker-1"].IP.String()}, Labels: map[string]string{"kubernetes.io/os": "linux"}},
	}
	n.Start(t, 37000, 9370)
	c, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	curl := func(from, port string) string {
		return n.Curl(c, from, "http://"+n.Pods["prod"].IP.String()+port+"/")
	}
	node.Eventually(t, "the control-plane node to be allowed", func() bool { return curl("cp-1", ":80") == "ok" })
	if got := curl("worker-1", ":80"); got != "error" {
		t.Errorf("worker node on :80 = %q; want dropped", got)
	}
	if got := curl("worker-1", ":10250"); got != "ok" {
		t.Errorf("worker node on :10250 (remote-node entity) = %q; want ok", got)
	}
}
