package agent

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/wardproxy/ward/agent/api"
	"github.com/wardproxy/ward/policy"
)

// TestEndpointLifecycle walks endpoints through the seed's lifecycle
// states as the agent reports them: before the first publish (restoring
// over pinned maps), ready, a label change not yet published, being
// published, a removal not yet published.
func TestEndpointLifecycle(t *testing.T) {
	eps := []Endpoint{
		{Name: "deathstar", ID: 1, IPs: []string{"10.0.0.1"}, Labels: map[string]string{"class": "deathstar"}},
		{Name: "xwing", ID: 2, IPs: []string{"10.0.0.2"}, Labels: map[string]string{"class": "xwing"}},
	}
	cfg := Config{Endpoints: eps}
	eng, err := newEngine(&cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ps, err := policy.Parse("p.yaml", []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress: [{fromEndpoints: [{matchLabels: {class: xwing}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	eng.repo.Upsert(ps[0])
	a := &Agent{eng: eng, log: slog.New(slog.NewTextHandler(io.Discard, nil)), regen: &regenerationMarker{}}
	states := func() map[string]string {
		out := map[string]string{}
		for _, d := range a.endpointDetails(false) {
			out[d.Name] = d.State
		}
		return out
	}
	check := func(step string, want map[string]string) {
		t.Helper()
		got := states()
		if len(got) != len(want) {
			t.Errorf("%s: states %v; want %v", step, got, want)
			return
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: states %v; want %v", step, got, want)
				return
			}
		}
	}
	check("before the first publish", map[string]string{"deathstar": api.StateWaitingToRegenerate, "xwing": api.StateWaitingToRegenerate})
	// Over pinned maps that still hold the deathstar from a previous run:
	// restoring; a workload the repository does not know has no identity.
	if st, _ := a.endpointState(eng.workloads()[0], nil, nil, map[uint64]bool{1: true}); st != api.StateRestoring {
		t.Errorf("pinned endpoint before the first publish: %s; want %s", st, api.StateRestoring)
	}
	if st, _ := a.endpointState(Workload{Endpoint: Endpoint{ID: 99}}, nil, nil, nil); st != api.StateWaitingForIdentity {
		t.Errorf("unknown endpoint: %s; want %s", st, api.StateWaitingForIdentity)
	}
	eng.publish(context.Background())
	check("published", map[string]string{"deathstar": api.StateReady, "xwing": api.StateReady})

	// xwing's labels change: its identity changes, and so does the
	// deathstar's policy (xwing no longer matches its peer selector).
	eps[1].Labels = map[string]string{"class": "ywing"}
	if _, err := eng.setEndpoints(sourceConfig, eps, "endpoints"); err != nil {
		t.Fatal(err)
	}
	check("labels changed", map[string]string{"deathstar": api.StateWaitingToRegenerate, "xwing": api.StateWaitingToRegenerate})
	// While a publish writes them (a consumer holds it), both are
	// regenerating.
	entered, release := make(chan struct{}), make(chan struct{})
	eng.consumers = []Consumer{a.regen, ConsumerFunc(func(context.Context, *State) error {
		close(entered)
		<-release
		return nil
	})}
	done := make(chan struct{})
	go func() { eng.publish(context.Background()); close(done) }()
	<-entered
	check("publishing", map[string]string{"deathstar": api.StateRegenerating, "xwing": api.StateRegenerating})
	close(release)
	<-done
	eng.consumers = []Consumer{a.regen}
	check("republished", map[string]string{"deathstar": api.StateReady, "xwing": api.StateReady})

	if _, err := eng.setEndpoints(sourceConfig, eps[:1], "endpoints"); err != nil {
		t.Fatal(err)
	}
	check("xwing removed", map[string]string{"deathstar": api.StateReady, "xwing": api.StateDisconnecting})
	eng.publish(context.Background())
	check("removal published", map[string]string{"deathstar": api.StateReady})

	d := a.endpointDetails(true)[0]
	// The peer selector selects nobody now: no entries, but the policy
	// still turns default deny on, and is listed by its rule.
	if !d.EnforceIngress || d.EnforceEgress || len(d.Rules) != 1 || d.Rules[0].Policy != ps[0].Key().String() || !slices.Equal(d.Rules[0].Paths, []string{"spec"}) {
		t.Errorf("deathstar %+v; want ingress enforced by %s spec", d, ps[0].Key())
	}
}

// TestPolicySources: a policy of the policy directory is "directory" with
// its file, any other one (a Kubernetes object) "k8s", named by its source
// or by its key; the derived labels carry the source.
func TestPolicySources(t *testing.T) {
	dir := &policy.Policy{Kind: policy.KindCNP, Metadata: policy.ObjectMeta{Name: "a", Namespace: "default"}, File: "a.yaml"}
	k8s := &policy.Policy{Kind: policy.KindCNP, Metadata: policy.ObjectMeta{Name: "b", Namespace: "prod", UID: "u-1"}, File: "k8s:CiliumNetworkPolicy/prod/b"}
	bare := &policy.Policy{Kind: policy.KindCCNP, Metadata: policy.ObjectMeta{Name: "c"}}
	ps := policySources{dir.Key(): "/etc/ward/policies/a.yaml"}
	for _, tt := range []struct {
		p              *policy.Policy
		source, origin string
	}{
		{dir, "directory", "/etc/ward/policies/a.yaml"},
		{k8s, "k8s", "CiliumNetworkPolicy/prod/b"},
		{bare, "k8s", "CiliumClusterwideNetworkPolicy/c"},
	} {
		if s, o := ps.of(tt.p); s != tt.source || o != tt.origin {
			t.Errorf("of(%s) = %s, %s; want %s, %s", tt.p.Key(), s, o, tt.source, tt.origin)
		}
	}
	got := derivedLabels(k8s, "k8s")
	want := []string{"k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy", "k8s:io.cilium.k8s.policy.name=b",
		"k8s:io.cilium.k8s.policy.namespace=prod", "k8s:io.cilium.k8s.policy.uid=u-1"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("derivedLabels = %q; want %q", got, want)
	}
}
