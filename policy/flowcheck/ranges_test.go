package flowcheck

import (
	"testing"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy"
)

// TestOverlappingL7PortsAddUp: the L7 rules of every proxied port range
// covering a flow apply (allow rules add up), as in the in-Envoy client.
// ward policy test used to consult only the first covering port, so b's
// request on port 80 was denied here and allowed by Envoy.
func TestOverlappingL7PortsAddUp(t *testing.T) {
	const two = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{path: /a}]}
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts:
    - ports: [{port: "80", endPort: 90, protocol: TCP}]
      rules: {http: [{path: /b}]}
`
	ps, err := policy.Parse("p.yaml", []byte(two))
	if err != nil {
		t.Fatal(err)
	}
	fl, err := ParseFlows([]byte(`[
 {"name": "a 80 /a", "from": {"labels": {"app": "a"}}, "to": {"labels": {"app": "web"}}, "port": 80, "http": {"method": "GET", "path": "/a"}},
 {"name": "b 80 /b", "from": {"labels": {"app": "b"}}, "to": {"labels": {"app": "web"}}, "port": 80, "http": {"method": "GET", "path": "/b"}},
 {"name": "b 85 /b", "from": {"labels": {"app": "b"}}, "to": {"labels": {"app": "web"}}, "port": 85, "http": {"method": "GET", "path": "/b"}},
 {"name": "a 85 /a", "from": {"labels": {"app": "a"}}, "to": {"labels": {"app": "web"}}, "port": 85, "http": {"method": "GET", "path": "/a"}},
 {"name": "b 80 /a", "from": {"labels": {"app": "b"}}, "to": {"labels": {"app": "web"}}, "port": 80, "http": {"method": "GET", "path": "/a"}}
]`))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Evaluate(ps, fl, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]flow.Verdict{"a 80 /a": VerdictAllowed, "b 80 /b": VerdictAllowed, "b 85 /b": VerdictAllowed, "a 85 /a": VerdictDenied, "b 80 /a": VerdictDenied}
	for _, r := range res {
		if r.Verdict != want[r.Name] {
			t.Errorf("%s: %s (%s); want %s", r.Name, r.Verdict, r.Reason, want[r.Name])
		}
	}
}
