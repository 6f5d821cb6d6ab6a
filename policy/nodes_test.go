package policy

import (
	"slices"
	"testing"
)

// TestFromNodesSelectsNodeIdentities: with per-node identities
// (enable-node-selector-labels), fromNodes selects the nodes whose labels
// match, and fromEntities: [remote-node] still selects every node.
func TestFromNodesSelectsNodeIdentities(t *testing.T) {
	r := NewRepository(Config{})
	cp, _, err := r.Allocator().Allocate(RemoteNodeLabels(map[string]string{"node-role.kubernetes.io/control-plane": ""}))
	if err != nil {
		t.Fatal(err)
	}
	worker, _, err := r.Allocator().Allocate(RemoteNodeLabels(map[string]string{"kubernetes.io/os": "linux"}))
	if err != nil {
		t.Fatal(err)
	}
	r.UpsertIdentity(cp)
	r.UpsertIdentity(worker)
	if _, err := r.UpsertEndpoint(Endpoint{ID: 1, Labels: K8sLabels(map[string]string{"env": "prod"}, "default")}); err != nil {
		t.Fatal(err)
	}
	ps, err := Parse("nodes.yaml", []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-cp}
spec:
  endpointSelector: {matchLabels: {env: prod}}
  ingress:
  - fromNodes: [{matchLabels: {node-role.kubernetes.io/control-plane: ""}}]
  - fromEntities: [remote-node]
    toPorts: [{ports: [{port: "10250", protocol: TCP}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		r.Upsert(p)
	}
	ep, ok := r.Snapshot().Endpoint(1)
	if !ok || ep.Ingress == nil {
		t.Fatal("no ingress policy")
	}
	var all, port []NumericIdentity
	for _, e := range ep.Ingress.Allow {
		if e.Port == 0 {
			all = append(all, e.Remote)
		} else {
			port = append(port, e.Remote)
		}
	}
	if !slices.Contains(all, cp.ID) || slices.Contains(all, worker.ID) {
		t.Errorf("fromNodes control-plane selects %v; want %d (control plane) and not %d (worker)", all, cp.ID, worker.ID)
	}
	for _, id := range []NumericIdentity{cp.ID, worker.ID, IdentityRemoteNode} {
		if !slices.Contains(port, id) {
			t.Errorf("fromEntities remote-node on 10250 selects %v; want %d among them", port, id)
		}
	}
}
