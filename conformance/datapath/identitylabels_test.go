package datapath

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/conformance/node"
)

// TestClusterLabelsAndDefaultDeny plays, through wardd as the node config
// sets it up:
//   - the cluster label: with clusterName: cluster1 every local endpoint
//     carries io.cilium.k8s.policy.cluster=cluster1, and the seed's
//     cross-cluster policy (Cilium's examples/policies/kubernetes/
//     clustermesh/cross-cluster-policy.yaml, unchanged) lets x-wing of
//     cluster1 reach the rebel-base of cluster2 (a remote endpoint labelled
//     with its cluster) and not the rebel-base of its own cluster;
//   - identity-relevant labels: pod-template-hash is not identity-relevant
//     (Cilium's default label filter), so a rule selecting it selects
//     nobody;
//   - enableDefaultDeny: {ingress: false}: the policy's allow rules do not
//     put the endpoint into default deny (a client no rule names still
//     gets in) while its ingressDeny rule still denies.
func TestClusterLabelsAndDefaultDeny(t *testing.T) {
	n := node.New(t,
		node.PodSpec{Name: "xwing", Labels: map[string]string{"name": "x-wing"}},
		node.PodSpec{Name: "rebel-c1", Labels: map[string]string{"name": "rebel-base"}},
		node.PodSpec{Name: "rebel-c2", Labels: map[string]string{"name": "rebel-base"}, Unmanaged: true},
		node.PodSpec{Name: "web", Labels: map[string]string{"app": "web"}},
		node.PodSpec{Name: "open", Labels: map[string]string{"app": "open"}},
		node.PodSpec{Name: "client1", Labels: map[string]string{"app": "client", "pod-template-hash": "abc"}},
		node.PodSpec{Name: "client2", Labels: map[string]string{"role": "other", "pod-template-hash": "abc"}},
		node.PodSpec{Name: "visitor", Labels: map[string]string{"app": "visitor"}})
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	for _, p := range []string{"rebel-c1", "rebel-c2", "web", "open"} {
		n.Serve(t, p, ok, ":80")
	}
	n.WritePolicy(t, "cross-cluster.yaml", `apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "allow-cross-cluster"
spec:
  description: "Allow x-wing in cluster1 to contact rebel-base in cluster2"
  endpointSelector:
    matchLabels:
      name: x-wing
      io.cilium.k8s.policy.cluster: cluster1
  egress:
  - toEndpoints:
    - matchLabels:
        name: rebel-base
        io.kubernetes.pod.namespace: default
        io.cilium.k8s.policy.cluster: cluster2
`)
	n.WritePolicy(t, "web.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
  - fromEndpoints: [{matchLabels: {pod-template-hash: abc}}]
`)
	n.WritePolicy(t, "open.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: open}
spec:
  endpointSelector: {matchLabels: {app: open}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {role: other}}]
`)
	n.Config.ClusterName = "cluster1"
	n.Configure(t, 38400, 9714)
	n.Config.Endpoints = append(n.Config.Endpoints, agent.Endpoint{
		Name: "rebel-c2", ID: 100, IPs: []string{n.Pods["rebel-c2"].IP.String()}, Remote: true,
		Labels: map[string]string{"name": "rebel-base", "io.cilium.k8s.policy.cluster": "cluster2"},
	})
	n.Start(t, 38400, 9714)

	c, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	curl := func(from, to string) string {
		return n.Curl(c, from, "http://"+n.Pods[to].IP.String()+"/")
	}
	node.Eventually(t, "x-wing of cluster1 to reach the rebel-base of cluster2", func() bool { return curl("xwing", "rebel-c2") == "ok" })
	node.Eventually(t, "client1 to reach web", func() bool { return curl("client1", "web") == "ok" })
	node.Eventually(t, "a client no rule names to reach open", func() bool { return curl("visitor", "open") == "ok" })
	for _, tc := range []struct{ from, to, want, why string }{
		{"xwing", "rebel-c1", "error", "the rebel-base of x-wing's own cluster is not selected"},
		{"client2", "web", "error", "pod-template-hash is not identity-relevant: the rule selecting it selects nobody"},
		{"client1", "open", "ok", "allowed by its rule"},
		{"client2", "open", "error", "ingressDeny still denies with enableDefaultDeny: {ingress: false}"},
		{"visitor", "web", "error", "web's policy (default deny) does not name visitor"},
	} {
		if got := curl(tc.from, tc.to); got != tc.want {
			t.Errorf("%s -> %s = %q, want %q: %s", tc.from, tc.to, got, tc.want, tc.why)
		}
	}
}
