package policy_test

import (
	"fmt"

	"github.com/wardproxy/ward/policy"
)

// The node agent's loop: parse, upsert, resolve, publish the snapshot, walk
// the L3/L4 entries (BPF policy map) and the proxy ports (NPDS).
func Example() {
	ps, err := policy.Parse("rule1.yaml", []byte(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: POST, path: /v1/request-landing}]}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	repo := policy.NewRepository(policy.Config{})
	for _, p := range ps {
		repo.Upsert(p)
	}
	repo.UpsertEndpoint(policy.Endpoint{ID: 1, Labels: policy.K8sLabels(map[string]string{"org": "empire", "class": "deathstar"}, "default")})
	repo.UpsertEndpoint(policy.Endpoint{ID: 2, Labels: policy.K8sLabels(map[string]string{"org": "empire", "class": "tiefighter"}, "default")})

	snap := repo.Snapshot() // immutable: publish with atomic.Pointer
	ep, _ := snap.Endpoint(1)
	fmt.Println("ingress enforced:", ep.Ingress.Enforced)
	for _, e := range ep.Ingress.Allow {
		fmt.Println("entry:", e)
	}
	for _, lp := range ep.Ingress.Proxy {
		for _, s := range lp.Selections {
			fmt.Printf("proxy %s/%d %s remotes=%v rules=%d\n", lp.Protocol, lp.Port, lp.Kind, s.Remotes, len(s.Rules.HTTP))
		}
	}
	// Output:
	// ingress enforced: true
	// entry: remote=256 TCP/80 redirect
	// entry: remote=257 TCP/80 redirect
	// proxy TCP/80 http remotes=[256 257] rules=1
}
