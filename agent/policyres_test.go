package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// TestPolicyResourcesFQDNHosts: the identity table carries the DNS proxy's
// claims with every publish and with each claim, but a claim before the
// first publish sends nothing (the claims alone would replace the
// endpoints' addresses in an Envoy adopted from the previous run).
func TestPolicyResourcesFQDNHosts(t *testing.T) {
	srv, err := xds.New(xds.Config{Socket: filepath.Join(t.TempDir(), "xds.sock")})
	if err != nil {
		t.Fatal(err)
	}
	claims := map[netip.Prefix]uint32{netip.MustParsePrefix("192.0.2.7/32"): 16777217}
	p := &policyResources{srv: srv, log: slog.New(slog.DiscardHandler), fqdn: func() map[netip.Prefix]uint32 { return claims }}
	hosts := func() []string {
		var out []string
		for _, r := range srv.Resources(npds.NetworkPolicyHostsType) {
			out = append(out, r.Name)
		}
		return out
	}
	if v := p.syncHosts(); v != "" || len(hosts()) != 0 {
		t.Fatalf("syncHosts before the first Apply = %q, hosts %v; want nothing sent", v, hosts())
	}
	repo := policy.NewRepository(policy.Config{})
	if _, err := repo.UpsertEndpoint(policy.Endpoint{ID: 1, Labels: policy.K8sLabels(map[string]string{"app": "a"}, "default")}); err != nil {
		t.Fatal(err)
	}
	st := &State{Policy: repo.Snapshot(), Workloads: []Workload{{Endpoint: Endpoint{Name: "a", ID: 1}, Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}}}
	if err := p.Apply(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if got := hosts(); len(got) != 2 || !slices.Contains(got, "16777217") {
		t.Fatalf("hosts after Apply = %v; want the endpoint's identity and 16777217", got)
	}
	claims[netip.MustParsePrefix("198.51.100.1/32")] = 16777218
	if v := p.syncHosts(); v == "" || !slices.Contains(hosts(), "16777218") {
		t.Fatalf("syncHosts after a claim = %q, hosts %v; want 16777218 sent", v, hosts())
	}
}
