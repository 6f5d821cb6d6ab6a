package policy

import (
	"strings"
	"testing"

	"github.com/wardproxy/ward/policy/l7"
)

func l7Doc(rules string) string {
	return header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: ` + rules + "\n"
}

// TestValidationRefusesWhatEnvoyWould covers the rules validation used to
// accept while the in-Envoy compiler refused them (or denied every request
// with them): each is now a FieldError naming the field.
func TestValidationRefusesWhatEnvoyWould(t *testing.T) {
	long := "/" + strings.Repeat("a", l7.MaxRegexLen)
	for _, tt := range []struct {
		name, rules, path, msg string
	}{
		{"unknown l7proto", `{l7proto: cassandra, l7: [{query_action: select}]}`, "spec.ingress[0].toPorts[0].rules.l7proto", `unknown l7proto "cassandra"`},
		{"unknown l7proto", `{l7proto: envoy.foo}`, "spec.ingress[0].toPorts[0].rules.l7proto", "unknown l7proto \"envoy.foo\" (ward has parsers for: memcache, r2d2)"},
		{"memcache unknown command", `{l7proto: memcache, l7: [{command: gett}]}`, "spec.ingress[0].toPorts[0].rules.l7[0].command", "unknown command \"gett\""},
		{"memcache two key constraints", `{l7proto: memcache, l7: [{keyExact: a, keyPrefix: b}]}`, "spec.ingress[0].toPorts[0].rules.l7[0]", "keyExact and keyPrefix are mutually exclusive"},
		{"memcache unknown key", `{l7proto: memcache, l7: [{opcode: "1"}]}`, "spec.ingress[0].toPorts[0].rules.l7[0].opcode", "unknown key \"opcode\" of l7proto memcache"},
		{"headerMatches secret without a name", `{http: [{headerMatches: [{name: X-Token, secret: {namespace: ns}}]}]}`, "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret.name", "missing"},
		{"over-long path regex", `{http: [{path: "` + long + `"}]}`, "spec.ingress[0].toPorts[0].rules.http[0].path", "more than the 32768 allowed"},
		{"over-long host regex", `{http: [{host: "` + strings.Repeat("h", l7.MaxRegexLen+1) + `"}]}`, "spec.ingress[0].toPorts[0].rules.http[0].host", "more than the 32768 allowed"},
		{"header without name", `{http: [{headers: [": x"]}]}`, "spec.ingress[0].toPorts[0].rules.http[0].headers[0]", "empty header name"},
		{"header with leading space", `{http: [{headers: [" X-Foo"]}]}`, "spec.ingress[0].toPorts[0].rules.http[0].headers[0]", "empty header name"},
		{"kafka apiVersion out of range", `{kafka: [{apiVersion: "40000"}]}`, "spec.ingress[0].toPorts[0].rules.kafka[0].apiVersion", "must be a non-negative integer"},
		{"dns empty label", `{dns: [{matchName: "a..example.com"}]}`, "spec.egress[0].toPorts[0].rules.dns[0].matchName", "empty label"},
		{"dns long label", `{dns: [{matchName: "` + strings.Repeat("a", 64) + `.com"}]}`, "spec.egress[0].toPorts[0].rules.dns[0].matchName", "longer than 63"},
		{"kafka unknown apiKey hint", `{kafka: [{apiKey: describeclustr}]}`, "spec.ingress[0].toPorts[0].rules.kafka[0].apiKey", `did you mean "describecluster"?`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			doc := l7Doc(tt.rules)
			if strings.HasPrefix(tt.rules, "{dns") {
				doc = strings.Replace(strings.Replace(doc, "ingress:", "egress:", 1), `port: "80", protocol: TCP`, `port: "53", protocol: UDP`, 1)
			}
			err := parseErr(t, doc)
			if err == nil {
				t.Fatal("no error")
			}
			for _, fe := range FieldErrors(err) {
				if fe.Path == tt.path && strings.Contains(fe.Msg, tt.msg) {
					return
				}
			}
			t.Errorf("no error at %q containing %q in:\n%v", tt.path, tt.msg, err)
		})
	}
}

// TestValidationAcceptsWhatEnvoyDoes covers rules the filters accept that
// validation used to refuse.
func TestValidationAcceptsWhatEnvoyDoes(t *testing.T) {
	for _, rules := range []string{
		`{kafka: [{apiKey: describecluster}]}`,
		`{kafka: [{apiKey: CREATE_TOPICS}]}`,
		`{kafka: [{apiKey: ConsumerGroupHeartbeat}]}`,
		`{kafka: [{apiKey: createtopic}, {apiKey: offsets}, {apiKey: groupcoordinator}]}`,
		`{kafka: [{topic: ` + strings.Repeat("t", l7.MaxTopicLen) + `}]}`,
	} {
		if err := parseErr(t, l7Doc(rules)); err != nil {
			t.Errorf("Parse(%s) = %v; want no error", rules, err)
		}
	}
}

// TestFQDNNameLikeDNSProxy: a toFQDNs matchName the DNS proxy's compiler
// would refuse is refused at validation.
func TestFQDNNameLikeDNSProxy(t *testing.T) {
	doc := header + "spec:\n  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: \"a..example.com\"}]\n"
	err := parseErr(t, doc)
	for _, fe := range FieldErrors(err) {
		if fe.Path == "spec.egress[0].toFQDNs[0].matchName" && strings.Contains(fe.Msg, "empty label") {
			return
		}
	}
	t.Errorf("Parse = %v; want an empty-label error at spec.egress[0].toFQDNs[0].matchName", err)
}

// TestDNSRulesOnlyDNSPorts: the DNS proxy's rules of a query come from the
// DNS ports alone, even when another protocol's L7 port covers 53 too.
func TestDNSRulesOnlyDNSPorts(t *testing.T) {
	doc := header + `spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: TCP}]
      rules: {http: [{path: /}]}
    - ports: [{port: "53", protocol: UDP}]
      rules: {dns: [{matchName: a.example.com}]}
`
	ps, err := Parse("t.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	r := NewRepository(Config{})
	for _, p := range ps {
		r.Upsert(p)
	}
	if _, err := r.UpsertEndpoint(Endpoint{ID: 1, Labels: K8sLabels(map[string]string{"app": "client"}, "default")}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.UpsertEndpoint(Endpoint{ID: 2, Labels: K8sLabels(map[string]string{"app": "dns"}, "default")}); err != nil {
		t.Fatal(err)
	}
	snap := r.Snapshot()
	client, _ := snap.Endpoint(1)
	server, _ := snap.Endpoint(2)
	rules, ok := client.Egress.DNSRules(server.Identity, 53)
	if !ok || len(rules) != 1 || rules[0].MatchName != "a.example.com" {
		t.Errorf("DNSRules = %v, %v; want the one DNS rule", rules, ok)
	}
}
