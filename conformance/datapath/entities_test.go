package datapath

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/node"
)

// TestKubeAPIServerEntity: toEntities: [kube-apiserver] allows exactly
// the addresses the node config names as the API server's
// (datapath.kubeAPIServer); another address outside the cluster is
// dropped.
func TestKubeAPIServerEntity(t *testing.T) {
	n := node.New(t,
		node.PodSpec{Name: "operator", Labels: map[string]string{"app": "operator"}},
		node.PodSpec{Name: "apiserver", Labels: map[string]string{"component": "kube-apiserver"}, Unmanaged: true},
		node.PodSpec{Name: "elsewhere", Labels: map[string]string{"app": "elsewhere"}, Unmanaged: true})
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	n.Serve(t, "apiserver", ok, ":6443")
	n.Serve(t, "elsewhere", ok, ":6443")
	n.WritePolicy(t, "policy.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-apiserver}
spec:
  endpointSelector: {matchLabels: {app: operator}}
  egress:
  - toEntities: [kube-apiserver]
    toPorts:
    - ports: [{port: "6443", protocol: TCP}]
`)
	n.Config.Datapath.KubeAPIServer = []string{n.Pods["apiserver"].IP.String()}
	n.Start(t, 34000, 9340)
	c, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	curl := func(to string) string {
		return n.Curl(c, "operator", "http://"+n.Pods[to].IP.String()+":6443/")
	}
	node.Eventually(t, "the API server to be reachable", func() bool { return curl("apiserver") == "ok" })
	if got := curl("elsewhere"); got != "error" {
		t.Errorf("another address on 6443 = %q; want dropped", got)
	}
}
