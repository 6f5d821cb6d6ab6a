package policyfilter

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/proxylib"
	"github.com/wardproxy/ward/proxylib/npdsclient"
	"github.com/wardproxy/ward/xds/npds"
)

type recordSink struct {
	mu sync.Mutex
	r  []*flow.Record
}

func (s *recordSink) Emit(r *flow.Record) { s.mu.Lock(); s.r = append(s.r, r); s.mu.Unlock() }

// replyStream is an HTTPStream that keeps the local reply and the header
// edits.
type replyStream struct {
	fakeStream
	conn   proxylib.ConnAddrs
	sni    string
	status int
	hdrs   [][2]string
}

func (s *replyStream) SendLocalReply(status int, h [][2]string, _ []byte, _ string) {
	s.status, s.hdrs = status, h
}
func (s *replyStream) Conn() proxylib.ConnAddrs       { return s.conn }
func (s *replyStream) RequestedServerName() string    { return s.sni }
func (s *replyStream) Header(n string) (string, bool) { v, ok := s.h[n]; return v, ok }

// newWardHTTP is ward.http as Envoy configures it, over a static policy.
func newWardHTTP(t *testing.T, cfg Config, ps []*npds.NetworkPolicy, hosts []*npds.NetworkPolicyHosts) (proxylib.HTTPFilterConfig, *recordSink) {
	t.Helper()
	c := npdsclient.New(npdsclient.Config{Compile: Compile})
	if err := c.Apply(context.Background(), ps, hosts); err != nil {
		t.Fatal(err)
	}
	sink := &recordSink{}
	return &httpConfig{cfg: cfg, client: c, sink: sink}, sink
}

// TestWardHTTP runs requests through ward.http's Go side: the binding
// resolves the endpoint, identity and port; filters/http.Filter decides,
// edits and records.
func TestWardHTTP(t *testing.T) {
	ps := []*npds.NetworkPolicy{{Name: "deathstar", EndpointIps: []string{"10.0.0.1"},
		IngressPerPortPolicies: []*npds.PortNetworkPolicy{
			{Port: 80, Rules: []*npds.PortNetworkPolicyRule{
				{Name: "p ingress[0]", RemoteIdentities: []uint32{1000}, L7: npds.HTTP(
					l7.HTTPRule{Method: "POST", Path: "/v1/request-landing"},
					l7.HTTPRule{Path: "/token", HeaderMatches: []*l7.HeaderMatch{{Name: "X-Token", Value: "s3cr3t", Mismatch: l7.MismatchReplace}}},
				)},
				{Name: "p ingress[1]", RemoteIdentities: []uint32{1001}},
				{Name: "p ingressDeny", RemoteIdentities: []uint32{1002}, Deny: true},
			}},
		},
		EgressPerPortPolicies: []*npds.PortNetworkPolicy{
			{Port: 8080, Rules: []*npds.PortNetworkPolicyRule{{Name: "p egress[0]", L7: npds.HTTP(l7.HTTPRule{Path: "/out"})}}},
		},
	}}
	hosts := []*npds.NetworkPolicyHosts{{Identity: 1000, HostAddresses: []string{"10.0.0.2"}}, {Identity: 1001, HostAddresses: []string{"10.0.0.3"}},
		{Identity: 1002, HostAddresses: []string{"10.0.0.4"}}, {Identity: 3000, HostAddresses: []string{"10.0.9.9"}}}
	in, inRecs := newWardHTTP(t, Config{XDSSocket: "x", Node: "n"}, ps, hosts)
	out, outRecs := newWardHTTP(t, Config{XDSSocket: "x", Node: "n", Direction: "egress"}, ps, hosts)
	for _, tt := range []struct {
		name     string
		cfg      proxylib.HTTPFilterConfig
		recs     *recordSink
		remote   string
		local    string
		headers  map[string]string
		sni      string
		status   int // 0: continued
		reason   string
		after    map[string]string
		src, dst string
	}{
		{name: "allowed", cfg: in, recs: inRecs, remote: "10.0.0.2:4000", local: "10.0.0.1:80", headers: map[string]string{":method": "POST", ":path": "/v1/request-landing"},
			reason: "p ingress[0]", src: "10.0.0.2", dst: "10.0.0.1"},
		{name: "denied", cfg: in, recs: inRecs, remote: "10.0.0.2:4000", local: "10.0.0.1:80", headers: map[string]string{":method": "PUT", ":path": "/v1/exhaust-port"},
			status: 403, reason: "no http rule matched", src: "10.0.0.2", dst: "10.0.0.1"},
		{name: "grpc denied", cfg: in, recs: inRecs, remote: "10.0.0.2:4000", local: "10.0.0.1:80", headers: map[string]string{":method": "POST", ":path": "/x.Y/Z", "content-type": "application/grpc"},
			status: 200, reason: "no http rule matched", src: "10.0.0.2", dst: "10.0.0.1"},
		{name: "replace mismatch noted", cfg: in, recs: inRecs, remote: "10.0.0.2:4000", local: "10.0.0.1:80", headers: map[string]string{":method": "GET", ":path": "/token", "x-token": "wrong"},
			reason: "p ingress[0]: header mismatch: x-token (REPLACE)", after: map[string]string{"x-token": "s3cr3t"}, src: "10.0.0.2", dst: "10.0.0.1"},
		{name: "l4 allow", cfg: in, recs: inRecs, remote: "10.0.0.3:4000", local: "10.0.0.1:80", headers: map[string]string{":method": "DELETE", ":path": "/"},
			reason: "l4 allow", src: "10.0.0.3", dst: "10.0.0.1"},
		{name: "deny rule", cfg: in, recs: inRecs, remote: "10.0.0.4:4000", local: "10.0.0.1:80", headers: map[string]string{":method": "GET", ":path": "/"},
			status: 403, reason: "deny rule", src: "10.0.0.4", dst: "10.0.0.1"},
		{name: "unknown peer is world", cfg: in, recs: inRecs, remote: "192.0.2.1:4000", local: "10.0.0.1:80", headers: map[string]string{":method": "POST", ":path": "/v1/request-landing"},
			status: 403, reason: "no rules for identity 2 on port 80", src: "192.0.2.1", dst: "10.0.0.1"},
		{name: "no endpoint", cfg: in, recs: inRecs, remote: "10.0.0.2:4000", local: "10.0.0.7:80", headers: map[string]string{":method": "POST", ":path": "/v1/request-landing"},
			status: 403, reason: "no policy for the endpoint", src: "10.0.0.2", dst: "10.0.0.7"},
		{name: "intercepted TLS", cfg: in, recs: inRecs, remote: "10.0.0.2:4000", local: "10.0.0.1:80", headers: map[string]string{":method": "POST", ":path": "/v1/request-landing"}, sni: "deathstar.empire",
			reason: "p ingress[0]", src: "10.0.0.2", dst: "10.0.0.1"},
		{name: "egress allowed", cfg: out, recs: outRecs, remote: "10.0.0.1:5000", local: "10.0.9.9:8080", headers: map[string]string{":method": "GET", ":path": "/out"},
			reason: "p egress[0]", src: "10.0.0.1", dst: "10.0.9.9"},
		{name: "egress denied", cfg: out, recs: outRecs, remote: "10.0.0.1:5000", local: "10.0.9.9:8080", headers: map[string]string{":method": "GET", ":path": "/in"},
			status: 403, reason: "no http rule matched", src: "10.0.0.1", dst: "10.0.9.9"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := &replyStream{fakeStream: fakeStream{h: tt.headers}, conn: proxylib.ConnAddrs{Remote: tt.remote, Local: tt.local}, sni: tt.sni}
			n := len(tt.recs.r)
			got := tt.cfg.NewHTTPFilter().OnRequestHeaders(s, true)
			want := proxylib.HeadersContinue
			if tt.status != 0 {
				want = proxylib.HeadersStopIteration
			}
			if got != want || s.status != tt.status {
				t.Errorf("OnRequestHeaders = %v, reply %d; want %v, %d", got, s.status, want, tt.status)
			}
			for k, v := range tt.after {
				if s.h[k] != v {
					t.Errorf("header %s = %q; want %q", k, s.h[k], v)
				}
			}
			if len(tt.recs.r) != n+1 {
				t.Fatalf("%d records; want one more than %d", len(tt.recs.r), n)
			}
			r := tt.recs.r[n]
			if r.Reason != tt.reason || r.Source.IP != tt.src || r.Destination.IP != tt.dst || r.HTTP == nil || r.HTTP.Status != tt.status {
				t.Errorf("record = %+v %+v; want reason %q %s -> %s status %d", r, r.HTTP, tt.reason, tt.src, tt.dst, tt.status)
			}
			if (r.TLS != nil) != (tt.sni != "") || tt.sni != "" && r.TLS.SNI != tt.sni {
				t.Errorf("record TLS = %+v; want SNI %q", r.TLS, tt.sni)
			}
			if tt.name == "allowed" && (len(r.Destination.Labels) != 1 || !strings.HasPrefix(r.Destination.Labels[0], "endpoint:deathstar")) {
				t.Errorf("destination labels = %v", r.Destination.Labels)
			}
		})
	}
}
