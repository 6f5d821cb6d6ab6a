package envoyhttp

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"

	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/conformance/stack"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds/npds"
)

// TestRuleShapes drives the HTTP rule kinds the seed describes through the
// real Envoy with curl, against an upstream that echoes what it received:
// Elasticsearch-style path regexes, headers presence and exact value (a
// second copy of a header cannot smuggle a value past it), headerMatches
// with a REPLACE mismatch action observed at the upstream, and path
// normalization (a /../ cannot walk out of an allowed prefix).
func TestRuleShapes(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	up := serve(t, func(ctx context.Context, l net.Listener) { deathstar.Serve(ctx, l, deathstar.NewEcho()) })
	rules := []l7.HTTPRule{
		{Method: "PUT", Path: "^/troop_logs/log/.*$"},
		{Method: "GET", Path: "^/(troop_logs|spaceship_diagnostics)/_search/??.*$"},
		{Method: "GET", Path: "/public/.*"},
		{Method: "GET", Path: "/admin", Headers: []string{"X-Role: admin"}},
		{Method: "GET", Path: "/flag", Headers: []string{"X-Flag"}},
		{Method: "GET", Path: "/token", HeaderMatches: []*l7.HeaderMatch{{Name: "X-Token", Value: "s3cr3t", Mismatch: "REPLACE"}}},
		{Method: "GET", Path: "/strict", HeaderMatches: []*l7.HeaderMatch{{Name: "X-Token", Value: "s3cr3t"}}},
	}
	ids := map[string]uint32{"client": 4242}
	res, ports := front(t, s, "es", 9200, up, false, ids, "client")
	s.PushEnvoy(t, res)
	s.PushPolicy(t, []*npds.NetworkPolicy{{Name: "es", IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 9200, Rules: []*npds.PortNetworkPolicyRule{{
		RemoteIdentities: []uint32{4242},
		L7:               npds.HTTP(rules...),
	}}}}}}, nil)
	base := "http://127.0.0.1:" + itoa(ports["client"])
	code := func(args ...string) string {
		out := curl(t, append([]string{"-o", "/dev/null"}, args...)...)
		return strings.TrimSpace(out)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"es: PUT a log", []string{"-X", "PUT", base + "/troop_logs/log/1"}, "200"},
		{"es: DELETE a log", []string{"-X", "DELETE", base + "/troop_logs/log/1"}, "403"},
		{"es: search troop logs", []string{base + "/troop_logs/_search?q=tag:sith"}, "200"},
		{"es: search diagnostics", []string{base + "/spaceship_diagnostics/_search"}, "200"},
		{"es: search another index", []string{base + "/deathstar_plans/_search"}, "403"},
		{"public prefix", []string{base + "/public/a"}, "200"},
		{"dot-dot out of the prefix", []string{"--path-as-is", base + "/public/../troop_logs/log/1"}, "403"},
		{"encoded slash dot-dot", []string{"--path-as-is", base + "/public/..%2F..%2Fadmin"}, "403"},
		{"header exact", []string{"-H", "X-Role: admin", base + "/admin"}, "200"},
		{"header wrong value", []string{"-H", "X-Role: intruder", base + "/admin"}, "403"},
		{"header smuggled second copy", []string{"-H", "X-Role: admin", "-H", "X-Role: intruder", base + "/admin"}, "403"},
		{"header missing", []string{base + "/admin"}, "403"},
		{"header presence", []string{"-H", "X-Flag: anything", base + "/flag"}, "200"},
		{"headerMatch equal", []string{"-H", "X-Token: s3cr3t", base + "/strict"}, "200"},
		{"headerMatch mismatch denies", []string{"-H", "X-Token: nope", base + "/strict"}, "403"},
	} {
		if got := code(tc.args...); got != tc.want {
			t.Errorf("%s: got %s; want %s", tc.name, got, tc.want)
		}
	}
	// REPLACE: the request goes through with the header rewritten.
	out := curl(t, "-H", "X-Token: wrong", base+"/token")
	body := strings.TrimSuffix(out, " 200")
	var e deathstar.Echo
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("REPLACE: upstream answer %q: %v", out, err)
	}
	if got := strings.Join(e.Headers["x-token"], ","); got != "s3cr3t" {
		t.Errorf("REPLACE: upstream saw x-token %q; want s3cr3t", got)
	}
}
