package http

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/wardproxy/ward/policy"
)

type secrets map[string]string

func (s secrets) Secret(ns, name string) (string, bool) {
	v, ok := s[ns+"/"+name]
	return v, ok
}

func mustCompile(t testing.TB, rules []policy.PortRuleHTTP, sec SecretSource) *Matcher {
	t.Helper()
	m, err := Compile(rules, sec)
	if err != nil {
		t.Fatalf("Compile(%+v) error: %v", rules, err)
	}
	return m
}

// The seed's policies (Cilium 1.18 docs: Star Wars demo, Cloud City gRPC,
// Elasticsearch, Layer 7 examples).
var (
	deathstarRules = []policy.PortRuleHTTP{{Method: "POST", Path: "/v1/request-landing"}}
	cloudcityRules = []policy.PortRuleHTTP{
		{Method: "POST", Path: "/cloudcity.DoorManager/GetName"},
		{Method: "POST", Path: "/cloudcity.DoorManager/GetLocation"},
		{Method: "POST", Path: "/cloudcity.DoorManager/RequestMaintenance"},
	}
	esOutpostRules   = []policy.PortRuleHTTP{{Method: "^PUT$", Path: "^/troop_logs/log/.*$"}}
	esSpaceshipRules = []policy.PortRuleHTTP{{Method: "^PUT$", Path: "^/spaceship_diagnostics/stats/.*$"}}
	esEmpireRules    = []policy.PortRuleHTTP{
		{Method: "^GET$", Path: "^/spaceship_diagnostics/_search/??.*$"},
		{Method: "^GET$", Path: "^/troop_logs/_search/??.*$"},
	}
	l7ExampleRules = []policy.PortRuleHTTP{
		{Method: "GET", Path: "/path1$"},
		{Method: "PUT", Path: "/path2$", Headers: []string{"X-My-Header: true"}},
	}
	publicRules = []policy.PortRuleHTTP{{Method: "GET", Path: "/public"}}
)

func TestMatchSeedExamples(t *testing.T) {
	tests := []struct {
		name    string
		rules   []policy.PortRuleHTTP
		req     Request
		allowed bool
		rule    int
	}{
		{name: "deathstar landing", rules: deathstarRules, req: Request{Method: "POST", Path: "/v1/request-landing", Host: "deathstar.default.svc.cluster.local"}, allowed: true, rule: 0},
		{name: "deathstar exhaust port", rules: deathstarRules, req: Request{Method: "PUT", Path: "/v1/exhaust-port", Host: "deathstar"}, rule: -1},
		{name: "deathstar landing with GET", rules: deathstarRules, req: Request{Method: "GET", Path: "/v1/request-landing"}, rule: -1},
		{name: "deathstar landing with query", rules: deathstarRules, req: Request{Method: "POST", Path: "/v1/request-landing?x=1"}, rule: -1},
		{name: "deathstar landing prefix only", rules: deathstarRules, req: Request{Method: "POST", Path: "/v1/request-landing/more"}, rule: -1},
		{name: "cloudcity GetName", rules: cloudcityRules, req: Request{Method: "POST", Path: "/cloudcity.DoorManager/GetName"}, allowed: true, rule: 0},
		{name: "cloudcity GetLocation", rules: cloudcityRules, req: Request{Method: "POST", Path: "/cloudcity.DoorManager/GetLocation"}, allowed: true, rule: 1},
		{name: "cloudcity RequestMaintenance", rules: cloudcityRules, req: Request{Method: "POST", Path: "/cloudcity.DoorManager/RequestMaintenance"}, allowed: true, rule: 2},
		{name: "cloudcity SetAccessCode", rules: cloudcityRules, req: Request{Method: "POST", Path: "/cloudcity.DoorManager/SetAccessCode"}, rule: -1},
		{name: "cloudcity GetStatus", rules: cloudcityRules, req: Request{Method: "POST", Path: "/cloudcity.DoorManager/GetStatus"}, rule: -1},
		{name: "cloudcity dot is any char", rules: cloudcityRules, req: Request{Method: "POST", Path: "/cloudcityXDoorManager/GetName"}, allowed: true, rule: 0},
		{name: "es outpost upload", rules: esOutpostRules, req: Request{Method: "PUT", Path: "/troop_logs/log/1"}, allowed: true, rule: 0},
		{name: "es outpost upload empty id", rules: esOutpostRules, req: Request{Method: "PUT", Path: "/troop_logs/log/"}, allowed: true, rule: 0},
		{name: "es outpost search", rules: esOutpostRules, req: Request{Method: "GET", Path: "/troop_logs/_search?q=tag:stormtrooper"}, rule: -1},
		{name: "es outpost diagnostics", rules: esOutpostRules, req: Request{Method: "PUT", Path: "/spaceship_diagnostics/stats/1"}, rule: -1},
		{name: "es spaceship upload", rules: esSpaceshipRules, req: Request{Method: "PUT", Path: "/spaceship_diagnostics/stats/1"}, allowed: true, rule: 0},
		{name: "es empire search diagnostics", rules: esEmpireRules, req: Request{Method: "GET", Path: "/spaceship_diagnostics/_search/?q=tag:tiefighter"}, allowed: true, rule: 0},
		{name: "es empire search logs", rules: esEmpireRules, req: Request{Method: "GET", Path: "/troop_logs/_search?q=tag:stormtrooper"}, allowed: true, rule: 1},
		{name: "es empire search logs bare", rules: esEmpireRules, req: Request{Method: "GET", Path: "/troop_logs/_search"}, allowed: true, rule: 1},
		{name: "es empire upload", rules: esEmpireRules, req: Request{Method: "PUT", Path: "/troop_logs/log/1"}, rule: -1},
		{name: "es empire lower-case method", rules: esEmpireRules, req: Request{Method: "get", Path: "/troop_logs/_search"}, rule: -1},
		{name: "l7 path1", rules: l7ExampleRules, req: Request{Method: "GET", Path: "/path1"}, allowed: true, rule: 0},
		{name: "l7 path2 without header", rules: l7ExampleRules, req: Request{Method: "PUT", Path: "/path2"}, rule: -1},
		{name: "l7 path2 with header", rules: l7ExampleRules, req: Request{Method: "PUT", Path: "/path2", Headers: MapHeaders{"x-my-header": "true"}}, allowed: true, rule: 1},
		{name: "l7 path2 wrong header", rules: l7ExampleRules, req: Request{Method: "PUT", Path: "/path2", Headers: MapHeaders{"x-my-header": "false"}}, rule: -1},
		{name: "l7 path2 header padded", rules: l7ExampleRules, req: Request{Method: "PUT", Path: "/path2", Headers: MapHeaders{"x-my-header": "true,true"}}, rule: -1},
		{name: "public", rules: publicRules, req: Request{Method: "GET", Path: "/public"}, allowed: true, rule: 0},
		{name: "private", rules: publicRules, req: Request{Method: "GET", Path: "/private"}, rule: -1},
		{name: "empty list allows", rules: nil, req: Request{Method: "DELETE", Path: "/x"}, allowed: true, rule: -1},
		{name: "empty rule allows", rules: []policy.PortRuleHTTP{{Path: "/a"}, {}}, req: Request{Method: "DELETE", Path: "/x"}, allowed: true, rule: 1},
		{name: "earlier rule before empty", rules: []policy.PortRuleHTTP{{Path: "/a"}, {}}, req: Request{Method: "DELETE", Path: "/a"}, allowed: true, rule: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mustCompile(t, tt.rules, nil)
			got := m.Match(&tt.req)
			if got.Allowed != tt.allowed || got.Rule != tt.rule {
				t.Errorf("Match(%+v) = allowed %v rule %d; want %v rule %d", tt.req, got.Allowed, got.Rule, tt.allowed, tt.rule)
			}
			if slow := naiveMatch(m, &tt.req); slow != got.Rule {
				t.Errorf("index rule %d; naive scan %d", got.Rule, slow)
			}
		})
	}
}

// naiveMatch is the specification of the index: the first rule whose
// conditions hold.
func naiveMatch(m *Matcher, req *Request) int {
	for i := range m.rules {
		if m.rules[i].matchBase(req) {
			return i
		}
	}
	return -1
}

func TestMatchFields(t *testing.T) {
	tests := []struct {
		name    string
		rule    policy.PortRuleHTTP
		req     Request
		allowed bool
	}{
		{name: "path is anchored at the end", rule: policy.PortRuleHTTP{Path: "/a"}, req: Request{Path: "/ab"}},
		{name: "path is anchored at the start", rule: policy.PortRuleHTTP{Path: "b"}, req: Request{Path: "/ab"}},
		{name: "path includes the query", rule: policy.PortRuleHTTP{Path: "/a\\?x=1"}, req: Request{Path: "/a?x=1"}, allowed: true},
		{name: "path regex", rule: policy.PortRuleHTTP{Path: "/api/v[0-9]+/.*"}, req: Request{Path: "/api/v12/things?x"}, allowed: true},
		{name: "path regex no match", rule: policy.PortRuleHTTP{Path: "/api/v[0-9]+/.*"}, req: Request{Path: "/api/vx/things"}},
		{name: "path alternation is grouped", rule: policy.PortRuleHTTP{Path: "/a|/b"}, req: Request{Path: "/b"}, allowed: true},
		{name: "path alternation is anchored", rule: policy.PortRuleHTTP{Path: "/a|/b"}, req: Request{Path: "/bc"}},
		{name: "absent path", rule: policy.PortRuleHTTP{Path: ".*"}, req: Request{Method: "CONNECT"}},
		{name: "method alternation", rule: policy.PortRuleHTTP{Method: "GET|HEAD"}, req: Request{Method: "HEAD"}, allowed: true},
		{name: "method case-insensitive flag", rule: policy.PortRuleHTTP{Method: "(?i)get"}, req: Request{Method: "GET"}, allowed: true},
		{name: "method is case-sensitive", rule: policy.PortRuleHTTP{Method: "get"}, req: Request{Method: "GET"}},
		{name: "host", rule: policy.PortRuleHTTP{Host: "api\\.example\\.com"}, req: Request{Host: "api.example.com"}, allowed: true},
		{name: "host with port, rule without", rule: policy.PortRuleHTTP{Host: "api\\.example\\.com"}, req: Request{Host: "api.example.com:8080"}, allowed: true},
		{name: "host with port, rule with", rule: policy.PortRuleHTTP{Host: "api\\.example\\.com:8080"}, req: Request{Host: "api.example.com:8080"}, allowed: true},
		{name: "host with other port", rule: policy.PortRuleHTTP{Host: "api\\.example\\.com:8080"}, req: Request{Host: "api.example.com:9090"}},
		{name: "host suffix", rule: policy.PortRuleHTTP{Host: "example\\.com"}, req: Request{Host: "evil-example.com"}},
		{name: "host wildcard", rule: policy.PortRuleHTTP{Host: ".*\\.example\\.com"}, req: Request{Host: "a.example.com"}, allowed: true},
		{name: "host ipv6 with port", rule: policy.PortRuleHTTP{Host: "\\[::1\\]"}, req: Request{Host: "[::1]:80"}, allowed: true},
		{name: "host absent", rule: policy.PortRuleHTTP{Host: ".*"}, req: Request{}},
		{name: "header presence", rule: policy.PortRuleHTTP{Headers: []string{"X-Token"}}, req: Request{Headers: MapHeaders{"x-token": ""}}, allowed: true},
		{name: "header presence missing", rule: policy.PortRuleHTTP{Headers: []string{"X-Token"}}, req: Request{Headers: MapHeaders{"x-other": "1"}}},
		{name: "header presence nil headers", rule: policy.PortRuleHTTP{Headers: []string{"X-Token"}}, req: Request{}},
		{name: "header value without colon", rule: policy.PortRuleHTTP{Headers: []string{"X-Token abc"}}, req: Request{Headers: MapHeaders{"x-token": "abc"}}, allowed: true},
		{name: "header value keeps spaces", rule: policy.PortRuleHTTP{Headers: []string{"X-Token: a b"}}, req: Request{Headers: MapHeaders{"x-token": "a b"}}, allowed: true},
		{name: "all fields", rule: policy.PortRuleHTTP{Method: "GET", Path: "/x", Host: "h", Headers: []string{"A: 1", "B"}}, req: Request{Method: "GET", Path: "/x", Host: "h", Headers: MapHeaders{"a": "1", "b": "2"}}, allowed: true},
		{name: "all fields but one", rule: policy.PortRuleHTTP{Method: "GET", Path: "/x", Host: "h", Headers: []string{"A: 1", "B"}}, req: Request{Method: "GET", Path: "/x", Host: "h", Headers: MapHeaders{"a": "1"}}},
		{name: "headerMatch value", rule: policy.PortRuleHTTP{HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Value: "v"}}}, req: Request{Headers: MapHeaders{"x-token": "v"}}, allowed: true},
		{name: "headerMatch value mismatch denies", rule: policy.PortRuleHTTP{HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Value: "v"}}}, req: Request{Headers: MapHeaders{"x-token": "w"}}},
		{name: "headerMatch presence", rule: policy.PortRuleHTTP{HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token"}}}, req: Request{Headers: MapHeaders{"x-token": "w"}}, allowed: true},
		{name: "headerMatch secret wins", rule: policy.PortRuleHTTP{HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Value: "v", Secret: &policy.Secret{Namespace: "ns", Name: "s"}}}}, req: Request{Headers: MapHeaders{"x-token": "v"}}},
		{name: "headerMatch secret value", rule: policy.PortRuleHTTP{HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Value: "v", Secret: &policy.Secret{Namespace: "ns", Name: "s"}}}}, req: Request{Headers: MapHeaders{"x-token": "s3cr3t"}}, allowed: true},
		{name: "headerMatch missing secret falls back to value", rule: policy.PortRuleHTTP{HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Value: "v", Secret: &policy.Secret{Namespace: "ns", Name: "nope"}}}}, req: Request{Headers: MapHeaders{"x-token": "v"}}, allowed: true},
		{name: "headerMatch missing secret no value never matches", rule: policy.PortRuleHTTP{HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Secret: &policy.Secret{Namespace: "ns", Name: "nope"}}}}, req: Request{Headers: MapHeaders{"x-token": ""}}},
		{name: "headerMatch missing secret no value with action never matches", rule: policy.PortRuleHTTP{HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Mismatch: policy.MismatchLog, Secret: &policy.Secret{Namespace: "ns", Name: "nope"}}}}, req: Request{Headers: MapHeaders{"x-token": ""}}},
		{name: "headerMatch LOG lets through", rule: policy.PortRuleHTTP{HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Value: "v", Mismatch: policy.MismatchLog}}}, req: Request{}, allowed: true},
	}
	sec := secrets{"ns/s": "s3cr3t"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mustCompile(t, []policy.PortRuleHTTP{tt.rule}, sec)
			got := m.Match(&tt.req)
			if got.Allowed != tt.allowed {
				t.Errorf("Match(%+v) with %+v = %v; want %v", tt.req, tt.rule, got.Allowed, tt.allowed)
			}
		})
	}
}

func TestMatchHeaderActions(t *testing.T) {
	sec := secrets{"ns/token": "s3cr3t"}
	tests := []struct {
		name    string
		rules   []policy.PortRuleHTTP
		headers MapHeaders
		allowed bool
		rule    int
		edits   []HeaderEdit
		notes   []HeaderNote
	}{
		{
			name:    "replace wrong value",
			rules:   []policy.PortRuleHTTP{{Path: "/", HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Value: "good", Mismatch: policy.MismatchReplace}}}},
			headers: MapHeaders{"x-token": "bad"},
			allowed: true,
			edits:   []HeaderEdit{{Op: EditSet, Name: "x-token", Value: "good"}},
			notes:   []HeaderNote{{Name: "x-token", Action: policy.MismatchReplace}},
		},
		{
			name:    "replace missing with secret",
			rules:   []policy.PortRuleHTTP{{Path: "/", HeaderMatches: []*policy.HeaderMatch{{Name: "Authorization", Secret: &policy.Secret{Namespace: "ns", Name: "token"}, Mismatch: policy.MismatchReplace}}}},
			headers: MapHeaders{},
			allowed: true,
			edits:   []HeaderEdit{{Op: EditSet, Name: "authorization", Value: "s3cr3t", Secret: true}},
			notes:   []HeaderNote{{Name: "authorization", Action: policy.MismatchReplace}},
		},
		{
			// In Envoy: wardd put the secret's value in Value and kept
			// the reference; the edit's value is still never printed.
			name:    "replace with a secret wardd resolved",
			rules:   []policy.PortRuleHTTP{{Path: "/", HeaderMatches: []*policy.HeaderMatch{{Name: "Authorization", Value: "inline", Secret: &policy.Secret{Namespace: "ns", Name: "resolved-by-wardd"}, Mismatch: policy.MismatchReplace}}}},
			headers: MapHeaders{"authorization": "bad"},
			allowed: true,
			edits:   []HeaderEdit{{Op: EditSet, Name: "authorization", Value: "inline", Secret: true}},
			notes:   []HeaderNote{{Name: "authorization", Action: policy.MismatchReplace}},
		},
		{
			name:    "replace not needed",
			rules:   []policy.PortRuleHTTP{{Path: "/", HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Value: "good", Mismatch: policy.MismatchReplace}}}},
			headers: MapHeaders{"x-token": "good"},
			allowed: true,
		},
		{
			name:    "add",
			rules:   []policy.PortRuleHTTP{{Path: "/", HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Value: "good", Mismatch: policy.MismatchAdd}}}},
			headers: MapHeaders{"x-token": "bad"},
			allowed: true,
			edits:   []HeaderEdit{{Op: EditAdd, Name: "x-token", Value: "good"}},
			notes:   []HeaderNote{{Name: "x-token", Action: policy.MismatchAdd}},
		},
		{
			name:    "delete wrong",
			rules:   []policy.PortRuleHTTP{{Path: "/", HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Value: "good", Mismatch: policy.MismatchDelete}}}},
			headers: MapHeaders{"x-token": "bad"},
			allowed: true,
			edits:   []HeaderEdit{{Op: EditRemove, Name: "x-token"}},
			notes:   []HeaderNote{{Name: "x-token", Action: policy.MismatchDelete}},
		},
		{
			name:    "delete absent does nothing",
			rules:   []policy.PortRuleHTTP{{Path: "/", HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Value: "good", Mismatch: policy.MismatchDelete}}}},
			headers: MapHeaders{},
			allowed: true,
		},
		{
			name:    "log",
			rules:   []policy.PortRuleHTTP{{Path: "/", HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Value: "good", Mismatch: policy.MismatchLog}}}},
			headers: MapHeaders{"x-token": "bad"},
			allowed: true,
			notes:   []HeaderNote{{Name: "x-token", Action: policy.MismatchLog}},
		},
		{
			name:  "base mismatch runs no action",
			rules: []policy.PortRuleHTTP{{Path: "/other", HeaderMatches: []*policy.HeaderMatch{{Name: "X-Token", Value: "good", Mismatch: policy.MismatchReplace}}}},
			rule:  -1,
		},
		{
			name: "fail condition beside an action denies without edits",
			rules: []policy.PortRuleHTTP{{Path: "/", HeaderMatches: []*policy.HeaderMatch{
				{Name: "X-Token", Value: "good", Mismatch: policy.MismatchReplace},
				{Name: "X-Must", Value: "1"},
			}}},
			headers: MapHeaders{"x-token": "bad"},
			rule:    -1,
		},
		{
			name: "every matching rule's actions run",
			rules: []policy.PortRuleHTTP{
				{Path: "/", HeaderMatches: []*policy.HeaderMatch{{Name: "A", Value: "1", Mismatch: policy.MismatchReplace}}},
				{Path: "/nope"},
				{Method: "GET", HeaderMatches: []*policy.HeaderMatch{{Name: "B", Value: "2", Mismatch: policy.MismatchAdd}}},
			},
			headers: MapHeaders{},
			allowed: true,
			edits:   []HeaderEdit{{Op: EditSet, Name: "a", Value: "1"}, {Op: EditAdd, Name: "b", Value: "2", Rule: 2}},
			notes:   []HeaderNote{{Name: "a", Action: policy.MismatchReplace}, {Rule: 2, Name: "b", Action: policy.MismatchAdd}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mustCompile(t, tt.rules, sec)
			got := m.Match(&Request{Method: "GET", Path: "/", Headers: tt.headers})
			want := Result{Allowed: tt.allowed, Rule: tt.rule, Edits: tt.edits, Notes: tt.notes}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Match mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

type recorder struct{ ops []string }

func (r *recorder) SetRequestHeader(n, v string) { r.ops = append(r.ops, "set "+n+"="+v) }
func (r *recorder) RemoveRequestHeader(n string) { r.ops = append(r.ops, "remove "+n) }
func (r *recorder) AddRequestHeader(n, v string) { r.ops = append(r.ops, "add "+n+"="+v) }

func TestHeaderEditApplyAndString(t *testing.T) {
	var r recorder
	edits := []HeaderEdit{{Op: EditAdd, Name: "a", Value: "1"}, {Op: EditSet, Name: "b", Value: "s3cr3t", Secret: true}, {Op: EditRemove, Name: "c"}}
	var strs []string
	for _, e := range edits {
		e.Apply(&r)
		strs = append(strs, e.String())
	}
	if diff := cmp.Diff([]string{"add a=1", "set b=s3cr3t", "remove c"}, r.ops); diff != "" {
		t.Errorf("Apply (-want +got):\n%s", diff)
	}
	if s := strings.Join(strs, "; "); strings.Contains(s, "s3cr3t") || !strings.Contains(s, "[redacted]") {
		t.Errorf("String() = %q; want the secret redacted", s)
	}
}

func TestCompileErrorsArePerRule(t *testing.T) {
	long := "/" + strings.Repeat("(a|b)", MaxRegexLen/5+1)
	rules := []policy.PortRuleHTTP{
		{Path: "/ok"},
		{Path: "("},
		{Method: long},
		{Headers: []string{": x"}},
		{HeaderMatches: []*policy.HeaderMatch{{Name: "x", Mismatch: "EXPLODE"}}},
		{HeaderMatches: []*policy.HeaderMatch{nil}},
		{Path: "/also-ok"},
	}
	m, err := Compile(rules, nil)
	if m == nil {
		t.Fatal("Compile returned no Matcher")
	}
	var ce *CompileError
	if !errors.As(err, &ce) || ce.Rule != 1 || ce.Field != "path" {
		t.Fatalf("Compile error = %v; want a *CompileError for http[1].path first", err)
	}
	for _, want := range []string{"http[1].path", "http[2].method", "http[3].headers[0]", "http[4].headerMatches[0]", "http[5].headerMatches[0]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	for _, tc := range []struct {
		path string
		rule int
	}{{"/ok", 0}, {"/also-ok", 6}, {"(", -1}, {"/", -1}} {
		if got := m.Match(&Request{Method: "GET", Path: tc.path}); got.Rule != tc.rule {
			t.Errorf("Match(%q).Rule = %d; want %d", tc.path, got.Rule, tc.rule)
		}
	}
}

func TestLongRegexCompiles(t *testing.T) {
	// cilium#41314: a path alternation of many routes exceeds Envoy's RE2
	// program size of 100 and made Cilium reject the whole policy.
	var alts []string
	for i := range 300 {
		alts = append(alts, fmt.Sprintf("/api/v1/resource%d/[^/]+", i))
	}
	m := mustCompile(t, []policy.PortRuleHTTP{{Path: strings.Join(alts, "|")}}, nil)
	if !m.Match(&Request{Path: "/api/v1/resource299/x"}).Allowed {
		t.Error("long alternation does not match its last branch")
	}
}

func TestQuoteCannotEscapeGroup(t *testing.T) {
	m := mustCompile(t, []policy.PortRuleHTTP{{Path: `/a\Q|.*`}}, nil)
	if m.Match(&Request{Path: "/b"}).Allowed {
		t.Error(`\Q escaped its group: /b matched`)
	}
	if !m.Match(&Request{Path: "/a|.*"}).Allowed {
		t.Error(`\Q literal does not match itself`)
	}
}

func TestNilMatcherDenies(t *testing.T) {
	var m *Matcher
	if m.Match(&Request{Method: "GET", Path: "/"}).Allowed {
		t.Error("nil Matcher allowed a request")
	}
	if mustCompile(t, nil, nil).Match(nil).Allowed {
		t.Error("nil Request allowed")
	}
}

func TestDFAAgreesWithRegexp(t *testing.T) {
	patterns := []string{
		"/v1/request-landing", "^/troop_logs/_search/??.*$", "/cloudcity.DoorManager/Get(Name|Location)",
		"/a$b", "/a^b", "^/x$", "(?i)/ADMIN/.*", `/\b.*`, "(?m)^/line$", "/[^/]+/items/[0-9]{2,4}",
		"/é.*", ".*", "/a*", "(/a|/b)+", `/\Qa.b\E`, "/x?y?z?", "/(?:api|v[12])/.*/done",
	}
	paths := []string{
		"/v1/request-landing", "/troop_logs/_search", "/troop_logs/_search?q=1", "/cloudcity.DoorManager/GetName",
		"/cloudcityxDoorManager/GetLocation", "/ab", "/a", "/x", "/ADMIN/x", "/admin/y", "/line", "/u/items/123",
		"/u/items/1", "/é", "/éa", "/", "/aaa", "/a/b/a", "/a.b", "/axb", "/xz", "/api/q/done", "/v3/q/done", "/x\n",
	}
	var rules []policy.PortRuleHTTP
	for _, p := range patterns {
		rules = append(rules, policy.PortRuleHTTP{Path: p})
	}
	m := mustCompile(t, rules, nil)
	if m.autos[fPath].dfa == nil {
		t.Fatal("no automaton built")
	}
	for _, path := range paths {
		want := -1
		for i, p := range patterns {
			if regexp.MustCompile(`^(?:` + p + `)$`).MatchString(path) {
				want = i
				break
			}
		}
		if got := m.Match(&Request{Path: path}); got.Rule != want {
			t.Errorf("Match(%q).Rule = %d; regexp says %d", path, got.Rule, want)
		}
		// Every rule alone, so later rules are checked too.
		for i, p := range patterns {
			mi := mustCompile(t, []policy.PortRuleHTTP{{Path: p}}, nil)
			want := regexp.MustCompile(`^(?:` + p + `)$`).MatchString(path)
			if got := mi.Match(&Request{Path: path}).Allowed; got != want {
				t.Errorf("rule %d %q on %q = %v; regexp says %v", i, p, path, got, want)
			}
		}
	}
}

func TestMatchBadInput(t *testing.T) {
	rules := []policy.PortRuleHTTP{
		{Method: "GET", Path: "/public/.*"},
		{Path: ".*/items/[0-9]+"},
		{Host: "h\\.example", Path: "/x"},
		{Path: "/é/[^/]+"},
	}
	m := mustCompile(t, rules, nil)
	huge := "/public/" + strings.Repeat("a", 1<<20)
	tests := []Request{
		{Method: "GET", Path: "/public/\xff\xfe"},
		{Method: "GET", Path: huge},
		{Method: "GET", Path: "/public/a\x00b"},
		{Method: "G\x00ET", Path: "/public/a"},
		{Method: "GET", Path: "/x/items/1\n"},
		{Path: "/x", Host: "h.example:\xff"},
		{Path: "/x", Host: ":"},
		{Path: "/x", Host: "[::1"},
		{Path: "/é/\xc3"},
		{Path: "/é/ü"},
		{Path: strings.Repeat("/", 1<<16)},
	}
	for _, req := range tests {
		got := m.Match(&req)
		if want := naiveMatch(m, &req); got.Rule != want {
			t.Errorf("Match(%.40q %.40q %.40q).Rule = %d; scan says %d", req.Method, req.Path, req.Host, got.Rule, want)
		}
	}
}

func TestMatchConcurrent(t *testing.T) {
	rules, req := benchRules(50, "noprefix")
	rules = append(rules, policy.PortRuleHTTP{Path: `/\b.*`}, policy.PortRuleHTTP{HeaderMatches: []*policy.HeaderMatch{{Name: "x", Value: "y", Mismatch: policy.MismatchReplace}}})
	m := mustCompile(t, rules, nil)
	done := make(chan bool)
	for range 4 {
		go func() {
			ok := true
			for range 200 {
				r := req
				ok = ok && m.Match(&r).Rule == 49
			}
			done <- ok
		}()
	}
	for range 4 {
		if !<-done {
			t.Error("concurrent Match gave another rule than 49")
		}
	}
}
