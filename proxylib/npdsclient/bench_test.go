package npdsclient_test

import (
	"fmt"
	"regexp"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/wardproxy/ward/proxylib/npdsclient"
	"github.com/wardproxy/ward/xds/npds"
)

// benchEndpoint is a typical endpoint policy: an HTTP rule set for two
// identities on port 80, an L4 allow on 8080-8090, an egress deny.
func benchEndpoint(i int, variant string) *npds.NetworkPolicy {
	return &npds.NetworkPolicy{
		Name:        fmt.Sprintf("ep-%04d", i),
		EndpointId:  uint64(i + 1),
		EndpointIps: []string{fmt.Sprintf("10.%d.%d.%d", i>>16&0xff, i>>8&0xff, i&0xff)},
		IngressPerPortPolicies: []*npds.PortNetworkPolicy{
			{Port: 80, Rules: []*npds.PortNetworkPolicyRule{npdsclient.WithHTTP(
				&npds.PortNetworkPolicyRule{RemoteIdentities: []uint32{1000, 1001}},
				"/public/"+variant+"/.*", "/v1/request-landing", "/items/[0-9]+")}},
			{Port: 8080, EndPort: 8090, Rules: []*npds.PortNetworkPolicyRule{{RemoteIdentities: []uint32{1002}}}},
		},
		EgressPerPortPolicies: []*npds.PortNetworkPolicy{
			{Port: 0, Rules: []*npds.PortNetworkPolicyRule{{RemoteIdentities: []uint32{2}, Deny: true}}},
		},
	}
}

// delta builds a delta response carrying msgs, each named by name(msg).
func delta[T proto.Message](tb testing.TB, typeURL, version string, name func(T) string, msgs ...T) *discovery.DeltaDiscoveryResponse {
	tb.Helper()
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: typeURL, SystemVersionInfo: version}
	for _, m := range msgs {
		a, err := anypb.New(m)
		if err != nil {
			tb.Fatal(err)
		}
		resp.Resources = append(resp.Resources, &discovery.Resource{Name: name(m), Version: version, Resource: a})
	}
	return resp
}

func policyName(p *npds.NetworkPolicy) string     { return p.GetName() }
func hostsName(h *npds.NetworkPolicyHosts) string { return h.GetName() }

const benchEndpoints = 5000

// compileRegexps stands in for ward's filters' compiler (which this
// package cannot import): it compiles each HTTP rule's path as an
// anchored regexp, the dominant cost of the real one.
func compileRegexps(r *npds.PortNetworkPolicyRule) (any, error) {
	paths, _ := npdsclient.HTTPPaths(r)
	out := make([]*regexp.Regexp, 0, len(paths))
	for _, p := range paths {
		re, err := regexp.Compile("^(?:" + p + ")$")
		if err != nil {
			return nil, err
		}
		out = append(out, re)
	}
	return out, nil
}

// BenchmarkPolicyOneEndpointChange is the in-Envoy cost of a delta that
// changes one endpoint's policy while the client holds benchEndpoints
// endpoints (HTTP rules compiled by compileRegexps).
func BenchmarkPolicyOneEndpointChange(b *testing.B) {
	c := npdsclient.New(npdsclient.Config{Compile: compileRegexps})
	all := make([]*npds.NetworkPolicy, benchEndpoints)
	for i := range all {
		all[i] = benchEndpoint(i, "a")
	}
	if err := c.ApplyDelta(delta(b, npds.NetworkPolicyType, "p1", policyName, all...)); err != nil {
		b.Fatal(err)
	}
	changes := [2]*discovery.DeltaDiscoveryResponse{
		delta(b, npds.NetworkPolicyType, "p2", policyName, benchEndpoint(benchEndpoints/2, "b")),
		delta(b, npds.NetworkPolicyType, "p3", policyName, benchEndpoint(benchEndpoints/2, "a")),
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := c.ApplyDelta(changes[i%2]); err != nil {
			b.Fatal(err)
		}
		i++
	}
	if _, ok := c.State().Endpoint("ep-0000"); !ok {
		b.Fatal("endpoints lost")
	}
}

// BenchmarkHostsOneIdentityChange is the cost of a delta that changes one
// identity's addresses while the client holds benchEndpoints identities.
func BenchmarkHostsOneIdentityChange(b *testing.B) {
	c := npdsclient.New(npdsclient.Config{Compile: compileRegexps})
	host := func(i int, last byte) *npds.NetworkPolicyHosts {
		return &npds.NetworkPolicyHosts{Identity: uint32(1000 + i), HostAddresses: []string{
			fmt.Sprintf("10.%d.%d.%d", i>>16&0xff, i>>8&0xff, i&0xff), fmt.Sprintf("172.%d.%d.%d/32", 16+int(last), i>>8&0xff, i&0xff),
		}}
	}
	all := make([]*npds.NetworkPolicyHosts, benchEndpoints)
	for i := range all {
		all[i] = host(i, 1)
	}
	if err := c.ApplyDelta(delta(b, npds.NetworkPolicyHostsType, "h1", hostsName, all...)); err != nil {
		b.Fatal(err)
	}
	changes := [2]*discovery.DeltaDiscoveryResponse{
		delta(b, npds.NetworkPolicyHostsType, "h2", hostsName, host(7, 2)),
		delta(b, npds.NetworkPolicyHostsType, "h3", hostsName, host(7, 1)),
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := c.ApplyDelta(changes[i%2]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
