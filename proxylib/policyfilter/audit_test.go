package policyfilter

import (
	"testing"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/proxylib"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// TestWardHTTPAudit: an endpoint's audit mode travels in its policy
// resource (xds.NetworkPolicy from the resolved policy's Audit) and
// ward.http lets its would-be-denied request through, recorded as
// audited with the HTTP fields; another endpoint stays enforcing.
func TestWardHTTPAudit(t *testing.T) {
	port := func(name string) *npds.PortNetworkPolicy {
		return &npds.PortNetworkPolicy{Port: 80, Rules: []*npds.PortNetworkPolicyRule{
			{Name: name, RemoteIdentities: []uint32{1000}, L7: npds.HTTP(l7.HTTPRule{Method: "POST", Path: "/v1/request-landing"})},
		}}
	}
	audited := xds.NetworkPolicy(xds.EndpointInfo{Name: "deathstar"}, &policy.EndpointPolicy{Audit: true})
	audited.EndpointIps = []string{"10.0.0.1"}
	audited.IngressPerPortPolicies = []*npds.PortNetworkPolicy{port("p ingress[0]")}
	if !audited.GetAudit() {
		t.Fatal("xds.NetworkPolicy dropped the endpoint's audit mode")
	}
	enforced := &npds.NetworkPolicy{Name: "other", EndpointIps: []string{"10.0.0.5"}, IngressPerPortPolicies: []*npds.PortNetworkPolicy{port("q ingress[0]")}}
	hosts := []*npds.NetworkPolicyHosts{{Identity: 1000, HostAddresses: []string{"10.0.0.2"}}}
	in, recs := newWardHTTP(t, Config{XDSSocket: "x", Node: "n"}, []*npds.NetworkPolicy{audited, enforced}, hosts)
	put := map[string]string{":method": "PUT", ":path": "/v1/exhaust-port"}
	for _, tt := range []struct {
		local   string
		status  int
		verdict flow.Verdict
	}{
		{local: "10.0.0.1:80", verdict: flow.Audited},
		{local: "10.0.0.5:80", status: 403, verdict: flow.Denied},
	} {
		s := &replyStream{fakeStream: fakeStream{h: put}, conn: proxylib.ConnAddrs{Remote: "10.0.0.2:4000", Local: tt.local}}
		n := len(recs.r)
		in.NewHTTPFilter().OnRequestHeaders(s, true)
		if s.status != tt.status || len(recs.r) != n+1 {
			t.Fatalf("%s: reply %d, %d records; want %d, one", tt.local, s.status, len(recs.r)-n, tt.status)
		}
		r := recs.r[n]
		if r.Verdict != tt.verdict || r.HTTP == nil || r.HTTP.Method != "PUT" || r.HTTP.Path != "/v1/exhaust-port" {
			t.Errorf("%s: record %+v %+v; want %s with the HTTP fields", tt.local, r, r.HTTP, tt.verdict)
		}
	}
}
