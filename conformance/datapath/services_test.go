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

const servicesPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-services}
spec:
  endpointSelector: {matchLabels: {class: tiefighter}}
  egress:
  - toServices:
    - k8sService: {serviceName: deathstar, namespace: default}
    - k8sService: {serviceName: rebel-base, namespace: default}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`

// TestServices: toServices without Kubernetes — services come from the
// watched services directory: one with a selector stands for the endpoints
// it selects, one without a selector for its addresses; a service removed
// takes its backends out of the policy.
func TestServices(t *testing.T) {
	n := node.New(t,
		node.PodSpec{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}},
		node.PodSpec{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
		node.PodSpec{Name: "rebel-base", Labels: map[string]string{"org": "alliance"}, Unmanaged: true})
	n.Serve(t, "deathstar", deathstar.New(), ":80")
	n.Serve(t, "rebel-base", deathstar.New(), ":80")
	n.WritePolicy(t, "policy.yaml", servicesPolicy)
	svcDir := filepath.Join(n.StateDir, "services")
	os.MkdirAll(svcDir, 0o755)
	n.Config.ServicesDir = svcDir
	n.Start(t, 28000, 9008)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	curl := func(to string) string {
		return n.Curl(c, "tiefighter", "-X", "POST", "-w", " %{http_code}", "http://"+n.Pods[to].IP.String()+"/v1/request-landing")
	}
	if got := curl("deathstar"); got != "error" {
		t.Fatalf("before the services exist: deathstar = %q; want dropped", got)
	}
	svcs := []agent.Service{
		{Name: "deathstar", Selector: map[string]string{"class": "deathstar"}},
		{Name: "rebel-base", Addresses: []string{n.Pods["rebel-base"].IP.String()}},
	}
	b, _ := json.Marshal(svcs)
	if err := os.WriteFile(filepath.Join(svcDir, "services.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	node.Eventually(t, "the selector service's backend to be allowed", func() bool { return curl("deathstar") == "Ship landed 200" })
	node.Eventually(t, "the selector-less service's address to be allowed", func() bool { return curl("rebel-base") == "Ship landed 200" })
	b, _ = json.Marshal(svcs[:1])
	if err := os.WriteFile(filepath.Join(svcDir, "services.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	node.Eventually(t, "the removed service's address to be dropped", func() bool { return curl("rebel-base") == "error" })
	if got := curl("deathstar"); got != "Ship landed 200" {
		t.Errorf("deathstar after removing rebel-base = %q; want still allowed", got)
	}
}
