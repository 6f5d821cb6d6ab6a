package policyfilter

import (
	"context"
	"fmt"
	"testing"

	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/proxylib"
	"github.com/wardproxy/ward/proxylib/npdsclient"
	"github.com/wardproxy/ward/xds/npds"
)

// fakeStream is an HTTPStream over a map, for measuring the filter's own
// per-request cost (no cgo).
type fakeStream struct {
	h       map[string]string
	replied int
}

func (s *fakeStream) RequestHeader(n string) (string, bool) { v, ok := s.h[n]; return v, ok }
func (s *fakeStream) Header(n string) (string, bool)        { v, ok := s.h[n]; return v, ok }
func (s *fakeStream) RequestHeaderValues(n string) []string {
	if v, ok := s.h[n]; ok {
		return []string{v}
	}
	return nil
}
func (s *fakeStream) SetRequestHeader(n, v string)                    { s.h[n] = v }
func (s *fakeStream) RemoveRequestHeader(n string)                    { delete(s.h, n) }
func (s *fakeStream) AddRequestHeader(n, v string)                    { s.h[n] = v }
func (s *fakeStream) SendLocalReply(int, [][2]string, []byte, string) { s.replied++ }
func (s *fakeStream) RequestedServerName() string                     { return "" }
func (s *fakeStream) Conn() proxylib.ConnAddrs {
	return proxylib.ConnAddrs{Remote: "10.0.0.2:43210", Local: "10.0.0.1:80", ID: 7}
}

// newBenchFilter builds ward.http over a policy of n rules, the request
// matching the last, without a running subscription.
func newBenchFilter(b *testing.B, n int) *httpFilter {
	var rules []l7.HTTPRule
	for i := 0; i < n-1; i++ {
		rules = append(rules, l7.HTTPRule{Method: "GET", Path: fmt.Sprintf("/api/v%d/items/[0-9]+", i)})
	}
	rules = append(rules, l7.HTTPRule{Method: "GET", Path: "/public"})
	c := npdsclient.New(npdsclient.Config{Compile: Compile})
	if err := c.Apply(context.Background(), []*npds.NetworkPolicy{{Name: "ep", EndpointIps: []string{"10.0.0.1"},
		IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, Rules: []*npds.PortNetworkPolicyRule{{
			L7: npds.HTTP(rules...),
		}}}}}}, []*npds.NetworkPolicyHosts{{Identity: 1000, HostAddresses: []string{"10.0.0.2"}}}); err != nil {
		b.Fatal(err)
	}
	return (&httpConfig{cfg: Config{XDSSocket: "x", Node: "n"}, client: c}).NewHTTPFilter().(*httpFilter)
}

// BenchmarkHTTPFilter is the Go side of one request through ward.http:
// address parsing, endpoint and identity lookup, rule selection, matching.
func BenchmarkHTTPFilter(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			f := newBenchFilter(b, n)
			s := &fakeStream{h: map[string]string{":method": "GET", ":path": "/public", ":authority": "deathstar"}}
			b.ReportAllocs()
			for b.Loop() {
				if f.OnRequestHeaders(s, true) != proxylib.HeadersContinue {
					b.Fatal("denied")
				}
			}
		})
	}
}
