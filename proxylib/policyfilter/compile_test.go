package policyfilter

import (
	"strings"
	"testing"

	httpf "github.com/wardproxy/ward/filters/http"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds/npds"
)

// TestCompileWire covers the in-Envoy compile of a rule's L7 part: the
// kinds it enforces, and the wire forms it refuses (the update is NACKed,
// the previous policy stays) instead of enforcing half of a rule.
func TestCompileWire(t *testing.T) {
	for _, tt := range []struct {
		name string
		l7   *npds.L7Rules
		want string // "" = compiles
		typ  string
	}{
		{name: "no l7", typ: "<nil>"},
		{name: "http", l7: npds.HTTP(l7.HTTPRule{Path: "/a"}), typ: "*http.Matcher"},
		{name: "kafka", l7: npds.Kafka(l7.KafkaRule{Topic: "t"}), typ: "*policyfilter.kafkaL7"},
		{name: "unknown field from a newer agent", l7: &npds.L7Rules{Rules: `{"http":[{"path":"/a","pathPrefix":"/b"}]}`}, want: "unknown field"},
		{name: "not json", l7: &npds.L7Rules{Rules: `{"http":`}, want: "decode l7 rules"},
		{name: "dns goes to the agent", l7: npds.NewL7(&l7.Rules{DNS: []l7.DNSRule{{MatchName: "a"}}}), want: "dns rules cannot be enforced"},
		{name: "no kind", l7: &npds.L7Rules{Rules: `{}`}, want: "no kind Envoy enforces"},
		{name: "generic l7proto", l7: npds.NewL7(&l7.Rules{L7Proto: "cassandra", L7: []l7.GenericRule{{"a": "b"}}}), want: `l7proto "cassandra": no parser in this module`},
		{name: "bad memcache rule", l7: npds.NewL7(&l7.Rules{L7Proto: "memcache", L7: []l7.GenericRule{{"command": "explode"}}}), want: "unknown memcached command"},
		{name: "bad kafka rule", l7: npds.Kafka(l7.KafkaRule{Role: "admin"}), want: "unknown role"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &npds.PortNetworkPolicyRule{Name: "r", L7: tt.l7}
			got, err := Compile(r)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Compile = %v", err)
				}
				if typ := typeName(got); typ != tt.typ {
					t.Errorf("Compile = %s; want %s", typ, tt.typ)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Compile = %v, %v; want an error containing %q", got, err, tt.want)
			}
		})
	}
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "<nil>"
	case *httpf.Matcher:
		return "*http.Matcher"
	case *kafkaL7:
		return "*policyfilter.kafkaL7"
	}
	return "other"
}
