package xds

import (
	"net/netip"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/xds/npds"
)

// TestWithFQDN: the DNS-derived addresses join the identity table under
// their FQDN identities; an address an endpoint or a CIDR identity already
// has keeps its identity (the in-Envoy table would refuse it twice), and a
// learnt IP inside a broader CIDR is added (the longer prefix wins there,
// as in the ipcache).
func TestWithFQDN(t *testing.T) {
	hosts := Hosts(map[netip.Addr]policy.NumericIdentity{netip.MustParseAddr("10.0.0.1"): 100}, []*policy.Identity{
		{ID: 200, Prefix: netip.MustParsePrefix("192.0.2.0/24")},
		{ID: 201, Prefix: netip.MustParsePrefix("198.51.100.7/32")},
	})
	var orig []*npds.NetworkPolicyHosts
	for _, h := range hosts {
		orig = append(orig, proto.Clone(h).(*npds.NetworkPolicyHosts))
	}
	got := WithFQDN(hosts, map[netip.Prefix]uint32{
		netip.MustParsePrefix("10.0.0.1/32"):            300, // an endpoint's
		netip.MustParsePrefix("198.51.100.7/32"):        300, // a CIDR identity's
		netip.MustParsePrefix("192.0.2.9/32"):           300,
		netip.MustParsePrefix("::ffff:203.0.113.5/128"): 301,
	})
	want := []*npds.NetworkPolicyHosts{
		{Identity: 100, HostAddresses: []string{"10.0.0.1"}},
		{Identity: 200, HostAddresses: []string{"192.0.2.0/24"}},
		{Identity: 201, HostAddresses: []string{"198.51.100.7/32"}},
		{Identity: 300, HostAddresses: []string{"192.0.2.9/32"}},
		{Identity: 301, HostAddresses: []string{"203.0.113.5/32"}},
	}
	if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
		t.Errorf("WithFQDN (-want +got):\n%s", d)
	}
	if d := cmp.Diff(orig, hosts, protocmp.Transform()); d != "" {
		t.Errorf("WithFQDN modified its input (-before +after):\n%s", d)
	}
}

// TestFollowDownstream: the cluster's upstream HTTP protocol is the
// downstream's, HTTP/1.1 and h2 both configured.
func TestFollowDownstream(t *testing.T) {
	c := MarkUpstream(FollowDownstream(OriginalDstCluster("c", false)), 1)
	if c.GetType() != cluster.Cluster_ORIGINAL_DST {
		t.Fatalf("type = %v; want ORIGINAL_DST", c.GetType())
	}
	var o upstreamhttp.HttpProtocolOptions
	if err := c.GetTypedExtensionProtocolOptions()[httpProtocolOptionsName].UnmarshalTo(&o); err != nil {
		t.Fatal(err)
	}
	d := o.GetUseDownstreamProtocolConfig()
	if d == nil || d.GetHttpProtocolOptions() == nil || d.GetHttp2ProtocolOptions() == nil {
		t.Errorf("protocol options = %v; want use_downstream_protocol_config with http and http2 options", &o)
	}
}
