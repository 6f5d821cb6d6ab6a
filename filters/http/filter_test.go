package http

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/policy/l7"
)

// fakeStream is a HeaderAccess over a multi-valued header map.
type fakeStream struct {
	h     map[string][]string
	edits []string
}

func newStream(kv ...string) *fakeStream {
	s := &fakeStream{h: map[string][]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.h[kv[i]] = append(s.h[kv[i]], kv[i+1])
	}
	return s
}

func (s *fakeStream) RequestHeader(n string) (string, bool) {
	if v := s.h[n]; len(v) > 0 {
		return v[0], true
	}
	return "", false
}
func (s *fakeStream) Header(n string) (string, bool) {
	if v := s.h[n]; len(v) > 0 {
		return strings.Join(v, ","), true
	}
	return "", false
}
func (s *fakeStream) SetRequestHeader(n, v string) {
	s.h[n] = []string{v}
	s.edits = append(s.edits, "set "+n)
}
func (s *fakeStream) RemoveRequestHeader(n string) {
	delete(s.h, n)
	s.edits = append(s.edits, "remove "+n)
}
func (s *fakeStream) AddRequestHeader(n, v string) {
	s.h[n] = append(s.h[n], v)
	s.edits = append(s.edits, "add "+n)
}

type ruleKey struct {
	ingress bool
	port    uint16
	id      uint32
}

type fakeRules map[ruleKey]*Matcher

func (r fakeRules) Rules(c *Conn, buf []RuleSet) (l7.Outcome, []RuleSet) {
	m, ok := r[ruleKey{c.Ingress, c.Port, c.RemoteIdentity}]
	if !ok {
		return l7.NoRule, buf[:0]
	}
	return l7.MatchRules, append(buf[:0], RuleSet{Matcher: m})
}

type panicRules struct{}

func (panicRules) Rules(*Conn, []RuleSet) (l7.Outcome, []RuleSet) { panic("boom") }

type records struct{ r []*flow.Record }

func (s *records) Emit(r *flow.Record) { s.r = append(s.r, r) }

func TestFilter(t *testing.T) {
	sec := secrets{"empire/token": "s3cr3t-token"}
	rules := fakeRules{
		{true, 80, 1001}:    mustCompile(t, deathstarRules, nil),
		{true, 50051, 1002}: mustCompile(t, cloudcityRules, nil),
		{false, 8080, 1003}: mustCompile(t, []policy.PortRuleHTTP{{Path: "/", HeaderMatches: []*policy.HeaderMatch{{Name: "Authorization", Secret: &policy.Secret{Namespace: "empire", Name: "token"}, Mismatch: policy.MismatchReplace}}}}, sec),
		{true, 9000, 1004}:  mustCompile(t, []policy.PortRuleHTTP{{Headers: []string{"X-Role: admin"}}}, nil),
		{true, 9001, 1005}:  nil,
		{false, 9002, 1006}: mustCompile(t, nil, nil),
	}
	tests := []struct {
		name    string
		conn    Conn
		stream  *fakeStream
		deny    bool
		status  int
		headers [][2]string
		body    string
		edits   []string
		after   map[string][]string // headers to check after the call
	}{
		{name: "deathstar landing", conn: Conn{Ingress: true, Port: 80, RemoteIdentity: 1001}, stream: newStream(":method", "POST", ":path", "/v1/request-landing", ":authority", "deathstar")},
		{name: "deathstar exhaust port", conn: Conn{Ingress: true, Port: 80, RemoteIdentity: 1001}, stream: newStream(":method", "PUT", ":path", "/v1/exhaust-port", ":authority", "deathstar"),
			deny: true, status: 403, headers: [][2]string{{"content-type", "text/plain"}}, body: "Access denied\r\n"},
		{name: "unknown identity fails closed", conn: Conn{Ingress: true, Port: 80, RemoteIdentity: 9999}, stream: newStream(":method", "POST", ":path", "/v1/request-landing"),
			deny: true, status: 403, headers: [][2]string{{"content-type", "text/plain"}}, body: "Access denied\r\n"},
		{name: "egress direction is separate", conn: Conn{Port: 80, RemoteIdentity: 1001}, stream: newStream(":method", "POST", ":path", "/v1/request-landing"),
			deny: true, status: 403, headers: [][2]string{{"content-type", "text/plain"}}, body: "Access denied\r\n"},
		{name: "grpc allowed", conn: Conn{Ingress: true, Port: 50051, RemoteIdentity: 1002}, stream: newStream(":method", "POST", ":path", "/cloudcity.DoorManager/GetName", "content-type", "application/grpc")},
		{name: "grpc denied", conn: Conn{Ingress: true, Port: 50051, RemoteIdentity: 1002}, stream: newStream(":method", "POST", ":path", "/cloudcity.DoorManager/SetAccessCode", "content-type", "application/grpc+proto"),
			deny: true, status: 200, headers: [][2]string{{"content-type", "application/grpc"}, {"grpc-status", "7"}, {"grpc-message", "Access denied"}}},
		{name: "replace secret header", conn: Conn{Port: 8080, RemoteIdentity: 1003}, stream: newStream(":method", "GET", ":path", "/", "authorization", "Bearer stolen"),
			edits: []string{"set authorization"}, after: map[string][]string{"authorization": {"s3cr3t-token"}}},
		{name: "duplicate header cannot smuggle", conn: Conn{Ingress: true, Port: 9000, RemoteIdentity: 1004}, stream: newStream(":method", "GET", ":path", "/", "x-role", "admin", "x-role", "intruder"),
			deny: true, status: 403, headers: [][2]string{{"content-type", "text/plain"}}, body: "Access denied\r\n"},
		{name: "single header value", conn: Conn{Ingress: true, Port: 9000, RemoteIdentity: 1004}, stream: newStream(":method", "GET", ":path", "/", "x-role", "admin")},
		{name: "nil matcher denies", conn: Conn{Ingress: true, Port: 9001, RemoteIdentity: 1005}, stream: newStream(":method", "GET", ":path", "/"),
			deny: true, status: 403, headers: [][2]string{{"content-type", "text/plain"}}, body: "Access denied\r\n"},
		{name: "empty rules allow", conn: Conn{Port: 9002, RemoteIdentity: 1006}, stream: newStream(":method", "GET", ":path", "/anything")},
		{name: "absent path denied by path rule", conn: Conn{Ingress: true, Port: 80, RemoteIdentity: 1001}, stream: newStream(":method", "POST", ":authority", "deathstar"),
			deny: true, status: 403, headers: [][2]string{{"content-type", "text/plain"}}, body: "Access denied\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var recs records
			f := &Filter{Rules: rules, Sink: &recs, Now: func() time.Time { return time.Unix(1, 0) }}
			act := f.OnRequestHeaders(&tt.conn, tt.stream)
			if act.Deny != tt.deny || act.Status != tt.status || string(act.Body) != tt.body {
				t.Errorf("OnRequestHeaders = deny %v status %d body %q; want %v %d %q", act.Deny, act.Status, act.Body, tt.deny, tt.status, tt.body)
			}
			if diff := cmp.Diff(tt.headers, act.Headers); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.edits, tt.stream.edits); diff != "" {
				t.Errorf("edits (-want +got):\n%s", diff)
			}
			for k, v := range tt.after {
				if diff := cmp.Diff(v, tt.stream.h[k]); diff != "" {
					t.Errorf("header %s after (-want +got):\n%s", k, diff)
				}
			}
			if len(recs.r) != 1 {
				t.Fatalf("%d records; want 1", len(recs.r))
			}
			r := recs.r[0]
			wantV := flow.Allowed
			if tt.deny {
				wantV = flow.Denied
			}
			if r.Verdict != wantV || r.Proto != "http" || r.HTTP == nil || r.HTTP.Status != tt.status || r.HTTP.Rule != act.Rule {
				t.Errorf("record = %+v %+v; want verdict %s status %d rule %d", r, r.HTTP, wantV, tt.status, act.Rule)
			}
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			for _, secret := range []string{"s3cr3t", "stolen", "intruder"} {
				if strings.Contains(string(b), secret) {
					t.Errorf("record %s holds header value %q", b, secret)
				}
			}
		})
	}
}

func TestFilterRecordFields(t *testing.T) {
	var recs records
	rules := fakeRules{{true, 50051, 7}: mustCompile(t, cloudcityRules, nil)}
	f := &Filter{Rules: rules, Sink: &recs, Now: func() time.Time { return time.Unix(42, 0).UTC() }}
	c := Conn{Ingress: true, Port: 50051, RemoteIdentity: 7, Protocol: ProtoHTTP2,
		Source: flow.Endpoint{Identity: 7, IP: "10.0.0.1", Port: 40000}, Destination: flow.Endpoint{Identity: 8, IP: "10.0.0.2", Port: 50051}}
	f.OnRequestHeaders(&c, newStream(":method", "POST", ":path", "/cloudcity.DoorManager/GetLocation", ":authority", "cc-door-mgr:50051", "content-type", "application/grpc", "cookie", "c=1"))
	want := &flow.Record{
		Time: time.Unix(42, 0).UTC(), Direction: flow.Ingress, Verdict: flow.Allowed, Proto: "http",
		Source: c.Source, Destination: c.Destination,
		HTTP: &flow.HTTP{Method: "POST", Host: "cc-door-mgr:50051", Path: "/cloudcity.DoorManager/GetLocation", Protocol: ProtoGRPC, Rule: 1},
	}
	if diff := cmp.Diff([]*flow.Record{want}, recs.r); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
}

func TestFilterFailsClosed(t *testing.T) {
	for name, f := range map[string]*Filter{"zero": {}, "panicking rules": {Rules: panicRules{}}} {
		act := f.OnRequestHeaders(&Conn{}, newStream(":method", "GET", ":path", "/"))
		if !act.Deny || act.Status != 403 {
			t.Errorf("%s: OnRequestHeaders = %+v; want a 403 deny", name, act)
		}
	}
}

func TestDenyResponse(t *testing.T) {
	tests := []struct {
		ct      string
		status  int
		headers [][2]string
		body    string
	}{
		{ct: "", status: 403, headers: [][2]string{{"content-type", "text/plain"}}, body: "Access denied\r\n"},
		{ct: "application/json", status: 403, headers: [][2]string{{"content-type", "text/plain"}}, body: "Access denied\r\n"},
		{ct: "application/grpc", status: 200, headers: grpcHeaders},
		{ct: "application/grpc+proto", status: 200, headers: grpcHeaders},
		{ct: "application/grpc-web", status: 200, headers: grpcHeaders},
	}
	for _, tt := range tests {
		s, h, b := DenyResponse(tt.ct)
		if s != tt.status || string(b) != tt.body || !cmp.Equal(h, tt.headers) {
			t.Errorf("DenyResponse(%q) = %d %v %q; want %d %v %q", tt.ct, s, h, b, tt.status, tt.headers, tt.body)
		}
	}
}

func TestFilterAuditAndNotes(t *testing.T) {
	rules := fakeRules{
		{true, 80, 1}: mustCompile(t, deathstarRules, nil),
		{true, 81, 1}: mustCompile(t, []policy.PortRuleHTTP{{HeaderMatches: []*policy.HeaderMatch{
			{Name: "X-Token", Value: "s3cr3t", Mismatch: policy.MismatchLog},
			{Name: "X-Other", Value: "v", Mismatch: policy.MismatchAdd},
		}}}, nil),
	}
	var recs records
	f := &Filter{Rules: rules, Sink: &recs}

	act := f.OnRequestHeaders(&Conn{Ingress: true, Port: 80, RemoteIdentity: 1, Audit: true}, newStream(":method", "PUT", ":path", "/v1/exhaust-port"))
	if act.Deny || recs.r[0].Verdict != flow.Audited || recs.r[0].HTTP.Status != 0 {
		t.Errorf("audit mode: action %+v record %+v; want the request through, recorded as audited", act, recs.r[0])
	}

	s := newStream(":method", "GET", ":path", "/", "x-token", "wrong")
	act = f.OnRequestHeaders(&Conn{Ingress: true, Port: 81, RemoteIdentity: 1}, s)
	want := "header mismatch: x-token (LOG), x-other (ADD)"
	if act.Deny || act.Reason != want || recs.r[1].Reason != want {
		t.Errorf("notes: action %+v record reason %q; want allowed with reason %q", act, recs.r[1].Reason, want)
	}
	if diff := cmp.Diff([]string{"v"}, s.h["x-other"]); diff != "" {
		t.Errorf("x-other after ADD (-want +got):\n%s", diff)
	}
}

// outcomeRules answers every request with one outcome and rule sets.
type outcomeRules struct {
	out  l7.Outcome
	sets []RuleSet
}

func (o outcomeRules) Rules(_ *Conn, buf []RuleSet) (l7.Outcome, []RuleSet) {
	return o.out, append(buf[:0], o.sets...)
}

type describer struct{ sni string }

func (d describer) Describe(r *flow.Record) { r.TLS = &flow.TLS{SNI: d.sni, Intercepted: true} }

// TestFilterOutcomes covers what ward.http's binding hands the filter:
// every l7.Select outcome, several rule sets, a connection without policy,
// and the Describer that completes records.
func TestFilterOutcomes(t *testing.T) {
	deathstar := mustCompile(t, deathstarRules, nil)
	public := mustCompile(t, []policy.PortRuleHTTP{{Path: "/public"}}, nil)
	for _, tt := range []struct {
		name   string
		src    RuleSource
		conn   Conn
		path   string
		deny   bool
		reason string
	}{
		{name: "allow all", src: outcomeRules{out: l7.AllowAll}, path: "/x", reason: "l4 allow"},
		{name: "allow all names its rule", src: outcomeRules{out: l7.AllowAll, sets: []RuleSet{{Name: "p ingress[0]"}}}, path: "/x", reason: "p ingress[0]"},
		{name: "deny rule", src: outcomeRules{out: l7.Deny}, path: "/public", deny: true, reason: "deny rule"},
		{name: "no rule", src: outcomeRules{out: l7.NoRule}, conn: Conn{Port: 80, RemoteIdentity: 7}, path: "/public", deny: true, reason: "no rules for identity 7 on port 80"},
		{name: "second rule set allows", src: outcomeRules{out: l7.MatchRules, sets: []RuleSet{{Name: "a", Matcher: deathstar}, {Name: "b", Matcher: public}}}, path: "/public", reason: "b"},
		{name: "no rule set allows", src: outcomeRules{out: l7.MatchRules, sets: []RuleSet{{Name: "a", Matcher: deathstar}, {Name: "b", Matcher: public}}}, path: "/private", deny: true, reason: "no http rule matched"},
		{name: "nil matcher allows nothing", src: outcomeRules{out: l7.MatchRules, sets: []RuleSet{{Name: "a"}}}, path: "/public", deny: true, reason: "no http rule matched"},
		{name: "no policy for the endpoint", src: outcomeRules{out: l7.AllowAll}, conn: Conn{NoPolicy: "no policy for the endpoint"}, path: "/public", deny: true, reason: "no policy for the endpoint"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var recs records
			f := &Filter{Rules: tt.src, Sink: &recs}
			c := tt.conn
			c.Describe = describer{sni: "deathstar.empire"}
			act := f.OnRequestHeaders(&c, newStream(":method", "GET", ":path", tt.path))
			if act.Deny != tt.deny || act.Reason != tt.reason {
				t.Errorf("OnRequestHeaders = deny %v reason %q; want %v %q", act.Deny, act.Reason, tt.deny, tt.reason)
			}
			if len(recs.r) != 1 || recs.r[0].Reason != tt.reason || recs.r[0].TLS == nil || recs.r[0].TLS.SNI != "deathstar.empire" {
				t.Errorf("records = %+v; want one with reason %q and the described TLS", recs.r, tt.reason)
			}
		})
	}
}

func TestFilterZeroAllocs(t *testing.T) {
	rules, req := benchRules(100, "grpc")
	f := &Filter{Rules: oneRule{mustCompile(t, rules, nil)}}
	s := &staticStream{method: req.Method, path: req.Path, host: req.Host}
	c := &Conn{Ingress: true, Port: 50051, RemoteIdentity: 1}
	if n := testing.AllocsPerRun(100, func() { f.OnRequestHeaders(c, s) }); n != 0 {
		t.Errorf("OnRequestHeaders allocates %v times per request", n)
	}
}

// TestFilterRecordRedactsQuery: a record's path keeps the path and hides
// the query string (tokens travel there) unless the filter is configured
// to keep it; allowed, denied and audited records alike (issue 12 item
// 12).
func TestFilterRecordRedactsQuery(t *testing.T) {
	rules := fakeRules{{true, 80, 7}: mustCompile(t, []policy.PortRuleHTTP{{Path: "/public.*"}}, nil)}
	tests := []struct {
		name        string
		path        string
		recordQuery bool
		audit       bool
		want        string
	}{
		{name: "allowed with a token", path: "/public/items?access_token=s3cr3t&x=1", want: "/public/items?<redacted>"},
		{name: "denied with a token", path: "/private?api_key=s3cr3t", want: "/private?<redacted>"},
		{name: "audited with a token", path: "/private?api_key=s3cr3t", audit: true, want: "/private?<redacted>"},
		{name: "no query", path: "/public/items", want: "/public/items"},
		{name: "empty query", path: "/public/items?", want: "/public/items?"},
		{name: "second question mark stays in the query", path: "/public?a=?s3cr3t", want: "/public?<redacted>"},
		{name: "configured to keep", path: "/public/items?access_token=s3cr3t", recordQuery: true, want: "/public/items?access_token=s3cr3t"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var recs records
			f := &Filter{Rules: rules, Sink: &recs, RecordQuery: tt.recordQuery}
			c := Conn{Ingress: true, Port: 80, RemoteIdentity: 7, Protocol: ProtoHTTP1, Audit: tt.audit}
			f.OnRequestHeaders(&c, newStream(":method", "GET", ":path", tt.path, ":authority", "svc"))
			if len(recs.r) != 1 {
				t.Fatalf("%d records; want 1", len(recs.r))
			}
			if got := recs.r[0].HTTP.Path; got != tt.want {
				t.Errorf("record path = %q; want %q", got, tt.want)
			}
			b, err := json.Marshal(recs.r[0])
			if err != nil {
				t.Fatal(err)
			}
			if !tt.recordQuery && strings.Contains(string(b), "s3cr3t") {
				t.Errorf("record %s carries the query's token", b)
			}
		})
	}
}
