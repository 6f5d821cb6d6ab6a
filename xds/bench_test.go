package xds

import (
	"fmt"
	"testing"

	"github.com/wardproxy/ward/xds/npds"
)

// BenchmarkSetPoliciesOneChange is the server's cost of publishing a set
// of 5,000 endpoint policies that differs from the previous one in one
// endpoint, to a connected client, until the client has the response.
func BenchmarkSetPoliciesOneChange(b *testing.B) {
	srv, c := startDelta(b)
	const n = 5000
	set := func(variant int) []*npds.NetworkPolicy {
		ps := make([]*npds.NetworkPolicy, n)
		for i := range ps {
			ps[i] = &npds.NetworkPolicy{Name: fmt.Sprintf("ep-%04d", i), EndpointId: uint64(i + 1),
				EndpointIps: []string{fmt.Sprintf("10.%d.%d.%d", i>>16&0xff, i>>8&0xff, i&0xff)},
				IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, Rules: []*npds.PortNetworkPolicyRule{
					{RemoteIdentities: []uint32{1000, 1001}, L7: npds.HTTP()}}}}}
		}
		ps[n/2].EndpointIps = []string{fmt.Sprintf("192.168.0.%d", variant)}
		return ps
	}
	sets := [2][]*npds.NetworkPolicy{set(1), set(2)}
	srv.SetPolicies(set(0))
	c.ack(c.recv())
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		srv.SetPolicies(sets[i%2])
		r := c.recv()
		if len(r.GetResources()) != 1 {
			b.Fatalf("response carries %d resources; want 1", len(r.GetResources()))
		}
		c.ack(r)
		i++
	}
}
