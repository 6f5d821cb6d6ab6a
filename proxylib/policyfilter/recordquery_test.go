package policyfilter

import (
	"testing"

	"github.com/wardproxy/ward/proxylib"
	"github.com/wardproxy/ward/xds/npds"
)

// TestWardHTTPRecordQuery: ward.http's records hide query strings unless
// filter_config.record_query is set.
func TestWardHTTPRecordQuery(t *testing.T) {
	ps := []*npds.NetworkPolicy{{Name: "ep", EndpointIps: []string{"10.0.0.1"},
		IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, Rules: []*npds.PortNetworkPolicyRule{{Name: "r", RemoteIdentities: []uint32{1000}}}}}}}
	hosts := []*npds.NetworkPolicyHosts{{Identity: 1000, HostAddresses: []string{"10.0.0.2"}}}
	for _, tt := range []struct {
		raw  string
		want string
	}{
		{raw: `{"xds_socket":"x","node":"n"}`, want: "/a?<redacted>"},
		{raw: `{"xds_socket":"x","node":"n","record_query":true}`, want: "/a?token=s3cr3t"},
	} {
		cfg, err := parseConfig([]byte(tt.raw))
		if err != nil {
			t.Fatalf("parseConfig(%s): %v", tt.raw, err)
		}
		fc, recs := newWardHTTP(t, cfg, ps, hosts)
		s := &replyStream{fakeStream: fakeStream{h: map[string]string{":method": "GET", ":path": "/a?token=s3cr3t"}},
			conn: proxylib.ConnAddrs{Remote: "10.0.0.2:4000", Local: "10.0.0.1:80"}}
		fc.NewHTTPFilter().OnRequestHeaders(s, true)
		if len(recs.r) != 1 || recs.r[0].HTTP == nil {
			t.Fatalf("%s: records %v; want one HTTP record", tt.raw, recs.r)
		}
		if got := recs.r[0].HTTP.Path; got != tt.want {
			t.Errorf("%s: record path %q; want %q", tt.raw, got, tt.want)
		}
	}
}
