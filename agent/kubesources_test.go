package agent

import (
	"io"
	"log/slog"
	"testing"

	"github.com/wardproxy/ward/policy"
)

// TestKubeNodeLabelsAreTheHosts: with the host firewall on, this node's
// Node labels become the host endpoint's (what nodeSelector selects), and
// a change of them reaches the repository.
func TestKubeNodeLabelsAreTheHosts(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := newEngine(&Config{}, log)
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{HostFirewall: HostFirewallConfig{Enabled: true}}, node: "n1", eng: e, dp: &datapath{}, log: log}
	s := &kubeSink{a: a}
	if !s.setHostLabels(map[string]string{"role": "edge"}) {
		t.Fatal("first labels: no change reported")
	}
	if ls := hostEndpointLabels(t, e); !ls.Has(policy.SourceK8s, "role") || !ls.Has(policy.SourceReserved, "host") {
		t.Errorf("host endpoint labels = %v; want reserved:host and k8s:role=edge", ls)
	}
	if s.setHostLabels(map[string]string{"role": "edge"}) {
		t.Error("the same labels reported a change")
	}
	if !s.setHostLabels(map[string]string{"zone": "b"}) {
		t.Fatal("new labels: no change reported")
	}
	if ls := hostEndpointLabels(t, e); ls.Has(policy.SourceK8s, "role") || !ls.Has(policy.SourceK8s, "zone") {
		t.Errorf("host endpoint labels = %v; want k8s:zone=b only", ls)
	}
}

func hostEndpointLabels(t *testing.T, e *engine) policy.Labels {
	t.Helper()
	ep, ok := e.repo.Snapshot().Endpoint(hostEndpointKey)
	if !ok {
		t.Fatal("no host endpoint")
	}
	return ep.Labels
}
