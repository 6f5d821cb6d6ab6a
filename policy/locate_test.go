package policy

import "testing"

func TestLocate(t *testing.T) {
	doc := `apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "secure-empire-kafka"
specs:
  - endpointSelector:
      matchLabels:
        app: kafka
    ingress:
    - fromEndpoints:
      - matchLabels:
          app: empire-hq
      toPorts:
      - ports:
        - port: "9092"
          protocol: TCP
        rules:
          kafka:
          - role: "produce"
            topic: "deathstar-plans"
          # a comment
          - role: "produce"
            apiKey: produce
    - fromEndpoint: []
      toPorts: [{ports: [{port: "1"}]}]
`
	for path, want := range map[string]int{
		"metadata.name": 4,
		"specs[0]":      6,
		"specs[0].endpointSelector.matchLabels.app":            8,
		"specs[0].ingress[0].toPorts[0].rules.kafka[1]":        22,
		"specs[0].ingress[0].toPorts[0].rules.kafka[1].apiKey": 23,
		"specs[0].ingress[0].toPorts[0].ports[0].protocol":     16,
		"specs[0].ingress[1].fromEndpoint":                     24,
		"specs[0].ingress[1].toPorts[0].ports[0]":              25, // flow style: the collection's line
		"specs[1]": 5,
		"nope":     0,
	} {
		if got := locate([]byte(doc), path); got != want {
			t.Errorf("%s: line %d, want %d", path, got, want)
		}
	}
}
