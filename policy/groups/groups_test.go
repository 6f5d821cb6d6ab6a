package groups

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/wardproxy/ward/policy"
)

type fakeProvider struct {
	addrs map[string][]netip.Addr // security group id -> addresses
	err   error
	calls int
}

func (f *fakeProvider) Addrs(_ context.Context, g policy.Groups) ([]netip.Addr, error) {
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	var out []netip.Addr
	for _, id := range g.AWS.SecurityGroupsIds {
		out = append(out, f.addrs[id]...)
	}
	return out, nil
}

const parent = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-db, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: api}}
  egress:
  - toGroups: [{aws: {securityGroupsIds: [sg-db]}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
  - toEndpoints: [{matchLabels: {app: cache}}]
`

func TestDerivative(t *testing.T) {
	p, err := policy.ParseOne("p.yaml", []byte(parent))
	if err != nil {
		t.Fatal(err)
	}
	prov := &fakeProvider{addrs: map[string][]netip.Addr{"sg-db": {netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("2001:db8::7"), netip.MustParseAddr("10.0.0.7")}}}
	d, err := Derivative(context.Background(), p, prov)
	if err != nil {
		t.Fatal(err)
	}
	if d.Metadata.Namespace != "prod" || d.Metadata.Name != DerivativeName(p) || d.HasGroups() {
		t.Fatalf("derivative %s: groups %v", d.Key(), d.HasGroups())
	}
	rs := d.Rules()
	if len(rs) != 1 || len(rs[0].Egress) != 1 {
		t.Fatalf("derivative rules %+v: want the one group section", rs)
	}
	var cidrs []string
	for _, c := range rs[0].Egress[0].ToCIDRSet {
		cidrs = append(cidrs, c.CIDR)
	}
	if !slices.Equal(cidrs, []string{"10.0.0.7/32", "2001:db8::7/128"}) {
		t.Errorf("cidrs %v", cidrs)
	}
	if got := rs[0].Egress[0].ToPorts; len(got) != 1 || got[0].Ports[0].Port != "5432" {
		t.Errorf("ports not kept: %+v", got)
	}
	if p.Rules()[0].Egress[0].ToGroups == nil {
		t.Error("the parent was modified")
	}
	// No address: no derivative.
	prov.addrs = nil
	if d, err := Derivative(context.Background(), p, prov); err != nil || d != nil {
		t.Errorf("no addresses: %v, %v", d, err)
	}
}

// TestController: the derivative follows the provider, a provider error
// keeps the last one, and a deleted parent takes its derivative along.
func TestController(t *testing.T) {
	p, err := policy.ParseOne("p.yaml", []byte(parent))
	if err != nil {
		t.Fatal(err)
	}
	repo := policy.NewRepository(policy.Config{})
	repo.Upsert(p)
	prov := &fakeProvider{addrs: map[string][]netip.Addr{"sg-db": {netip.MustParseAddr("10.0.0.7")}}}
	changes := 0
	c := &Controller{Repo: repo, Provider: prov, OnChange: func() { changes++ }}
	derivative := func() *policy.Policy {
		for _, q := range repo.Policies() {
			if q.Metadata.Name == DerivativeName(p) {
				return q
			}
		}
		return nil
	}
	cidr := func() string {
		d := derivative()
		if d == nil {
			return ""
		}
		return d.Rules()[0].Egress[0].ToCIDRSet[0].CIDR
	}
	c.Sync(context.Background(), 0)
	if cidr() != "10.0.0.7/32" || changes != 1 {
		t.Fatalf("cidr %q after %d changes", cidr(), changes)
	}
	// Unchanged: no change reported.
	c.Sync(context.Background(), 0)
	if changes != 1 {
		t.Errorf("an unchanged refresh reported a change")
	}
	prov.addrs["sg-db"] = []netip.Addr{netip.MustParseAddr("10.0.0.8")}
	c.Sync(context.Background(), 0)
	if cidr() != "10.0.0.8/32" {
		t.Errorf("cidr %q after the group changed", cidr())
	}
	prov.err = errors.New("throttled")
	c.Sync(context.Background(), 0)
	if cidr() != "10.0.0.8/32" {
		t.Errorf("a provider error changed the derivative: %q", cidr())
	}
	if st := c.Status(); len(st) != 1 || st[0].Error == "" || st[0].Derivative == "" {
		t.Errorf("status %+v", st)
	}
	prov.err = nil
	repo.Delete(p.Key())
	c.Sync(context.Background(), 0)
	if derivative() != nil || len(c.Status()) != 0 {
		t.Error("the derivative outlived its parent")
	}
}
