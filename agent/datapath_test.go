package agent

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/wardproxy/ward/policy"
)

// TestApplyRewritesOnlyChangedEndpoints: a publish writes an endpoint's
// BPF policy only when its resolved policy, interface or address changed
// (a policy change touching one endpoint rewrites that endpoint only, and
// re-decides only its flows); a failed write is retried by the next
// publish.
func TestApplyRewritesOnlyChangedEndpoints(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	eps := []Endpoint{
		{Name: "a", ID: 1, IPs: []string{"10.0.0.1"}, Labels: map[string]string{"app": "a"}, Interface: "veth-a"},
		{Name: "b", ID: 2, IPs: []string{"10.0.0.2"}, Labels: map[string]string{"app": "b"}, Interface: "veth-b"},
		{Name: "c", ID: 3, IPs: []string{"10.0.0.3"}, Labels: map[string]string{"app": "c"}, Interface: "veth-c"},
	}
	e, err := newEngine(&Config{Endpoints: eps}, log)
	if err != nil {
		t.Fatal(err)
	}
	dp := newScaleDatapath()
	e.consumers = []Consumer{dp}
	upsert := func(port string) {
		ps, err := policy.Parse("p.yaml", []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "`+port+`", protocol: TCP}]}]
`))
		if err != nil {
			t.Fatal(err)
		}
		e.repo.Upsert(ps[0])
	}
	upsert("80")
	e.publish(ctx)
	if dp.written != 3 {
		t.Fatalf("first publish wrote %d endpoint policies; want 3", dp.written)
	}
	e.publish(ctx)
	if dp.written != 3 {
		t.Errorf("an unchanged publish wrote %d more; want 0", dp.written-3)
	}
	upsert("8080")
	e.publish(ctx)
	if dp.written != 4 {
		t.Errorf("a change to a's policy wrote %d endpoint policies; want 1 (a's)", dp.written-3)
	}
	// A failed attach (the interface is gone) is retried next time.
	dp.ifindex = func(name string) (int, error) {
		if name == "veth-c" {
			return 0, errNoInterface
		}
		return 1, nil
	}
	delete(dp.applied, 3) // as if c's interface had changed
	e.publish(ctx)
	w := dp.written
	e.publish(ctx)
	if dp.written != w+1 {
		t.Errorf("c (waiting for its interface) rewritten %d times by the next publish; want 1", dp.written-w)
	}
}

// TestStatusNamesUnenforcedHostPolicies: a host policy (nodeSelector),
// which wardd accepts but does not enforce with the host firewall
// disabled, is named in the status errors, never silently taken for
// enforced; with the host firewall enabled it is enforced and not named.
func TestStatusNamesUnenforcedHostPolicies(t *testing.T) {
	ps, err := policy.Parse("host.yaml", []byte(`apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: demo-host-policy}
spec:
  nodeSelector: {matchLabels: {node-access: ssh}}
  ingress:
  - toPorts: [{ports: [{port: "22", protocol: TCP}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	got := unenforced(ps, false)
	if len(got) != 1 || !strings.Contains(got[0], "demo-host-policy") || !strings.Contains(got[0], "not enforced") {
		t.Errorf("unenforced = %q; want the host policy named as not enforced", got)
	}
	if got := unenforced(ps, true); len(got) != 0 {
		t.Errorf("unenforced with the host firewall = %q; want nothing", got)
	}
}
