package policy

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: Parse never panics, and what it accepts resolves without
// panicking.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("../examples/*/*.yaml")
	more, _ := filepath.Glob("../examples/*/*/*.yaml")
	for _, s := range append(seeds, more...) {
		if data, err := os.ReadFile(s); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(ds))
	f.Add([]byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"a"},"spec":{"endpointSelector":{},"egress":[{"toPorts":[{"ports":[{"port":"53","protocol":"ANY"}],"rules":{"dns":[{"matchPattern":"*"}]}}]}]}}`))
	f.Add([]byte("---\n---\n- [1, {a: b}]\n"))
	f.Add([]byte("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {endpointSelector: {}, ingressDeny: [{toPorts: [{ports: [{port: 80, endPort: 70000}]}]}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := Parse("fuzz.yaml", data)
		if err != nil {
			_ = err.Error()
		}
		if len(ps) == 0 {
			return
		}
		r := NewRepository(Config{})
		for _, p := range ps {
			r.Upsert(p)
		}
		if _, err := r.UpsertEndpoint(Endpoint{ID: 1, Labels: K8sLabels(map[string]string{"app": "a"}, "default")}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.UpsertEndpoint(Endpoint{ID: 2, Labels: K8sLabels(nil, "kube-system"), NamedPorts: []NamedPort{{Name: "http", Port: 80, Protocol: ProtocolTCP}}}); err != nil {
			t.Fatal(err)
		}
		snap := r.Snapshot()
		for _, ep := range snap.Endpoints() {
			for _, d := range []Direction{Ingress, Egress} {
				ep.Direction(d).Lookup(IdentityWorld, ProtocolTCP, 80, false)
			}
		}
	})
}
