package http

import (
	"fmt"
	"testing"

	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/policy/l7"
)

// benchRules returns n rules of the shape services write (method + path
// regex per route); the request matches only the last.
func benchRules(n int, shape string) ([]policy.PortRuleHTTP, Request) {
	rules := make([]policy.PortRuleHTTP, n)
	for i := range rules {
		switch shape {
		case "regex":
			rules[i] = policy.PortRuleHTTP{Method: "GET", Path: fmt.Sprintf("/api/v1/service%d/items/[0-9]+", i)}
		case "grpc":
			rules[i] = policy.PortRuleHTTP{Method: "POST", Path: fmt.Sprintf("/pkg.Service%d/Method", i)}
		case "noprefix":
			rules[i] = policy.PortRuleHTTP{Method: "GET", Path: fmt.Sprintf(".*/service%d/items/[0-9]+", i)}
		case "host":
			rules[i] = policy.PortRuleHTTP{Method: "GET", Host: fmt.Sprintf("svc%d\\.example\\.com", i), Path: "/api/.*"}
		}
	}
	req := Request{Method: "GET", Host: "api.example.com", Headers: MapHeaders{"user-agent": "bench"}}
	switch shape {
	case "regex", "noprefix":
		req.Path = fmt.Sprintf("/api/v1/service%d/items/12345", n-1)
	case "grpc":
		req.Method, req.Path = "POST", fmt.Sprintf("/pkg.Service%d/Method", n-1)
	case "host":
		req.Path, req.Host = "/api/x", fmt.Sprintf("svc%d.example.com:8080", n-1)
	}
	return rules, req
}

func BenchmarkMatch(b *testing.B) {
	for _, shape := range []string{"regex", "grpc", "host", "noprefix"} {
		for _, n := range []int{10, 100, 1000} {
			b.Run(fmt.Sprintf("%s/rules=%d", shape, n), func(b *testing.B) {
				rules, req := benchRules(n, shape)
				m := mustCompile(b, rules, nil)
				if r := m.Match(&req); !r.Allowed || r.Rule != n-1 {
					b.Fatalf("Match = %+v; want rule %d", r, n-1)
				}
				b.ReportAllocs()
				for b.Loop() {
					m.Match(&req)
				}
			})
		}
	}
}

func TestMatchZeroAllocs(t *testing.T) {
	for _, shape := range []string{"regex", "grpc", "host", "noprefix"} {
		rules, req := benchRules(100, shape)
		m := mustCompile(t, rules, nil)
		if a := testing.AllocsPerRun(50, func() { m.Match(&req) }); a != 0 {
			t.Errorf("%s: Match allocates %v times per request; want 0", shape, a)
		}
	}
}

func BenchmarkCompile(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			rules, _ := benchRules(n, "regex")
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Compile(rules, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// staticStream is a HeaderAccess that does not allocate.
type staticStream struct{ method, path, host string }

func (s *staticStream) RequestHeader(n string) (string, bool) {
	switch n {
	case ":method":
		return s.method, true
	case ":path":
		return s.path, true
	case ":authority":
		return s.host, true
	}
	return "", false
}
func (s *staticStream) Header(n string) (string, bool)  { return s.RequestHeader(n) }
func (s *staticStream) SetRequestHeader(string, string) {}
func (s *staticStream) RemoveRequestHeader(string)      {}
func (s *staticStream) AddRequestHeader(string, string) {}

type oneRule struct{ m *Matcher }

func (o oneRule) Rules(_ *Conn, buf []RuleSet) (l7.Outcome, []RuleSet) {
	return l7.MatchRules, append(buf[:0], RuleSet{Name: "rule", Matcher: o.m})
}

func BenchmarkFilter(b *testing.B) {
	rules, req := benchRules(100, "grpc")
	f := &Filter{Rules: oneRule{mustCompile(b, rules, nil)}}
	s := &staticStream{method: req.Method, path: req.Path, host: req.Host}
	c := &Conn{Ingress: true, Port: 50051, RemoteIdentity: 1}
	if act := f.OnRequestHeaders(c, s); act.Deny {
		b.Fatalf("denied: %+v", act)
	}
	b.ReportAllocs()
	for b.Loop() {
		f.OnRequestHeaders(c, s)
	}
}
