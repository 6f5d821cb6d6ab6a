package policy

import (
	"errors"
	"strings"
	"testing"
)

const header = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n"

func parseErr(t *testing.T, doc string) error {
	t.Helper()
	_, err := Parse("t.yaml", []byte(doc))
	return err
}

// TestValidationErrors covers every constraint of issue 3 and the seed.
func TestValidationErrors(t *testing.T) {
	tests := []struct {
		name, doc, path, msg string
	}{
		{"unknown field did-you-mean", header + "spec:\n  endpointSelector: {}\n  ingres: []\n", "spec.ingres", `unknown field "ingres" (did you mean "ingress"?)`},
		{"wrong type", header + "spec:\n  endpointSelector: {}\n  ingress: {}\n", "spec.ingress", "must be a list, got an object"},
		{"wrong scalar type", header + "spec:\n  endpointSelector: {matchLabels: {app: 1}}\n  ingress: [{}]\n", "spec.endpointSelector.matchLabels.app", "must be a string, got number 1 (quote it)"},
		{"missing selector", header + "spec:\n  ingress: [{}]\n", "spec", "rule must have an endpointSelector or a nodeSelector"},
		{"missing spec", header, "spec", "missing: a policy needs spec or specs"},
		{"missing name", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {}\nspec: {endpointSelector: {}}\n", "metadata.name", "missing"},
		{"bad apiVersion", "apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}}\n", "apiVersion", `unsupported apiVersion "cilium.io/v1"`},
		{"bad kind", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolcy\nmetadata: {name: p}\nspec: {endpointSelector: {}}\n", "kind", `did you mean "CiliumNetworkPolicy"?`},
		{"namespace in CNP endpointSelector", header + "spec:\n  endpointSelector: {matchLabels: {k8s:io.kubernetes.pod.namespace: x}}\n  ingress: [{}]\n", "spec.endpointSelector", "cannot select a namespace"},
		{"nodeSelector in CNP", header + "spec:\n  nodeSelector: {}\n  ingress: [{}]\n", "spec.nodeSelector", "only allowed in a CiliumClusterwideNetworkPolicy"},
		{"both selectors", "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  nodeSelector: {}\n", "spec", "cannot have both"},
		{"bad operator", header + "spec:\n  endpointSelector: {matchExpressions: [{key: a, operator: Inn, values: [x]}]}\n", "spec.endpointSelector.matchExpressions[0].operator", `did you mean "In"?`},
		{"In without values", header + "spec:\n  endpointSelector: {matchExpressions: [{key: a, operator: In}]}\n", "spec.endpointSelector.matchExpressions[0].values", "needs at least one value"},
		{"Exists with values", header + "spec:\n  endpointSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}\n", "spec.endpointSelector.matchExpressions[0].values", "takes no values"},
		{"two L7 types", header + `spec:
  endpointSelector: {}
  egress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{}], kafka: [{}]}
`, "spec.egress[0].toPorts[0].rules", "only one L7 protocol per port: found http and kafka"},
		{"dns port range", header + `spec:
  endpointSelector: {}
  egress:
  - toPorts:
    - ports: [{port: "53", endPort: 54, protocol: UDP}]
      rules: {dns: [{matchPattern: "*"}]}
`, "spec.egress[0].toPorts[0].ports[0].endPort", "DNS rules do not support port ranges"},
		{"dns on ingress", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules: {dns: [{matchName: a.com}]}
`, "spec.ingress[0].toPorts[0].rules.dns", "DNS rules are not allowed on ingress"},
		{"dns without port", header + `spec:
  endpointSelector: {}
  egress:
  - toPorts:
    - rules: {dns: [{matchName: a.com}]}
`, "spec.egress[0].toPorts[0].rules.dns", "need an explicit port"},
		{"L7 in deny", header + `spec:
  endpointSelector: {}
  ingressDeny:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{path: /}]}
`, "spec.ingressDeny[0].toPorts[0].rules", "deny rules do not support L7 rules"},
		{"toFQDNs in deny", header + `spec:
  endpointSelector: {}
  egressDeny:
  - toFQDNs: [{matchName: a.com}]
`, "spec.egressDeny[0].toFQDNs", "deny rules do not support toFQDNs"},
		{"toFQDNs with toEndpoints", header + `spec:
  endpointSelector: {}
  egress:
  - toFQDNs: [{matchName: a.com}]
    toEndpoints: [{}]
`, "spec.egress[0]", "toFQDNs cannot be combined with toEndpoints"},
		{"toFQDNs with toCIDR", header + `spec:
  endpointSelector: {}
  egress:
  - toCIDR: [10.0.0.0/8]
    toFQDNs: [{matchName: a.com}]
`, "spec.egress[0]", "toFQDNs cannot be combined with toCIDR"},
		{"two L3 kinds", header + `spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{}]
    fromEntities: [world]
`, "spec.ingress[0]", "combining fromEndpoints and fromEntities in one rule is not supported"},
		{"http path without slash", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{path: "v1/x"}]}
`, "spec.ingress[0].toPorts[0].rules.http[0].path", `path "v1/x" must begin with /`},
		{"bad method regex", header + `spec:
  endpointSelector: {}
  egress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: "("}]}
`, "spec.egress[0].toPorts[0].rules.http[0].method", `invalid method regex "("`},
		{"bad path regex", header + `spec:
  endpointSelector: {}
  egress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{path: "/a[" }]}
`, "spec.egress[0].toPorts[0].rules.http[0].path", `invalid path regex`},
		{"bad host regex", header + `spec:
  endpointSelector: {}
  egress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{host: "a(b" }]}
`, "spec.egress[0].toPorts[0].rules.http[0].host", `invalid host regex`},
		{"bad mismatch", header + `spec:
  endpointSelector: {}
  egress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{headerMatches: [{name: x, value: v, mismatch: DROP}]}]}
`, "spec.egress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch", `unknown mismatch action "DROP"`},
		{"kafka role and apiKey", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules: {kafka: [{role: produce, apiKey: produce}]}
`, "spec.ingress[0].toPorts[0].rules.kafka[0]", "role and apiKey are mutually exclusive"},
		{"kafka bad role", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules: {kafka: [{role: write}]}
`, "spec.ingress[0].toPorts[0].rules.kafka[0].role", `unknown role "write" (want produce or consume)`},
		{"kafka bad apiKey", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules: {kafka: [{apiKey: fetchh}]}
`, "spec.ingress[0].toPorts[0].rules.kafka[0].apiKey", `did you mean "fetch"?`},
		{"kafka negative apiVersion", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules: {kafka: [{apiVersion: "-1"}]}
`, "spec.ingress[0].toPorts[0].rules.kafka[0].apiVersion", "must be a non-negative integer"},
		{"kafka long topic", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules: {kafka: [{topic: ` + strings.Repeat("a", 256) + `}]}
`, "spec.ingress[0].toPorts[0].rules.kafka[0].topic", "topic is 256 characters long, the maximum is 255"},
		{"kafka topic chars", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules: {kafka: [{topic: "a/b"}]}
`, "spec.ingress[0].toPorts[0].rules.kafka[0].topic", `invalid character '/'`},
		{"port out of range", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "65536", protocol: TCP}]
`, "spec.ingress[0].toPorts[0].ports[0].port", "out of range 0-65535"},
		{"endPort below port", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "80", endPort: 79, protocol: TCP}]
`, "spec.ingress[0].toPorts[0].ports[0].endPort", "endPort 79 is below port 80"},
		{"bad port name", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "http_alt", protocol: TCP}]
`, "spec.ingress[0].toPorts[0].ports[0].port", `invalid port "http_alt"`},
		{"bad protocol", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TPC}]
`, "spec.ingress[0].toPorts[0].ports[0].protocol", `did you mean "TCP"?`},
		{"L7 on UDP", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: UDP}]
      rules: {http: [{}]}
`, "spec.ingress[0].toPorts[0].ports[0].protocol", "L7 rules apply to TCP only (not UDP)"},
		{"L7 on port 0", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "0", protocol: TCP}]
      rules: {http: [{}]}
`, "spec.ingress[0].toPorts[0].ports", "L7 rules cannot be used with port 0"},
		{"bad CIDR", header + `spec:
  endpointSelector: {}
  egress:
  - toCIDR: [10.0.0.0/33]
`, "spec.egress[0].toCIDR[0]", `invalid CIDR "10.0.0.0/33"`},
		{"except outside", header + `spec:
  endpointSelector: {}
  egress:
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]
`, "spec.egress[0].toCIDRSet[0].except[0]", "11.0.0.0/16 is not inside 10.0.0.0/8"},
		{"unknown entity", header + `spec:
  endpointSelector: {}
  egress:
  - toEntities: [wrold]
`, "spec.egress[0].toEntities[0]", `unknown entity "wrold" (did you mean "world"?)`},
		{"fqdn both", header + `spec:
  endpointSelector: {}
  egress:
  - toFQDNs: [{matchName: a.com, matchPattern: "*.a.com"}]
`, "spec.egress[0].toFQDNs[0]", "mutually exclusive"},
		{"fqdn bad pattern", header + `spec:
  endpointSelector: {}
  egress:
  - toFQDNs: [{matchPattern: "a b.com"}]
`, "spec.egress[0].toFQDNs[0].matchPattern", "invalid pattern"},
		{"icmp with ports", header + `spec:
  endpointSelector: {}
  egress:
  - icmps: [{fields: [{type: 8}]}]
    toPorts: [{ports: [{port: "80"}]}]
`, "spec.egress[0]", "icmps and toPorts cannot be in the same rule"},
		{"icmp bad type", header + `spec:
  endpointSelector: {}
  egress:
  - icmps: [{fields: [{type: EchoRequst}]}]
`, "spec.egress[0].icmps[0].fields[0].type", `did you mean "EchoRequest"?`},
		{"icmp bad family", header + `spec:
  endpointSelector: {}
  egress:
  - icmps: [{fields: [{type: 8, family: IPv5}]}]
`, "spec.egress[0].icmps[0].fields[0].family", `unknown family "IPv5"`},
		{"serverNames with L7 no TLS", header + `spec:
  endpointSelector: {}
  egress:
  - toPorts:
    - ports: [{port: "443", protocol: TCP}]
      serverNames: [a.com]
      rules: {http: [{}]}
`, "spec.egress[0].toPorts[0].serverNames", "serverNames with L7 rules need terminatingTLS"},
		{"empty server name", header + `spec:
  endpointSelector: {}
  egress:
  - toPorts:
    - ports: [{port: "443", protocol: TCP}]
      serverNames: [""]
`, "spec.egress[0].toPorts[0].serverNames[0]", "empty server name"},
		{"tls without secret", header + `spec:
  endpointSelector: {}
  egress:
  - toPorts:
    - ports: [{port: "443", protocol: TCP}]
      terminatingTLS: {}
`, "spec.egress[0].toPorts[0].terminatingTLS.secret", "missing"},
		{"VRRP with a port", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: VRRP}]}]
`, "spec.ingress[0].toPorts[0].ports[0].port", "protocol VRRP has no ports"},
		{"IGMP with L7", header + `spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{protocol: IGMP}], rules: {http: [{}]}}]
`, "spec.ingress[0].toPorts[0].ports[0].protocol", "L7 rules apply to TCP only"},
		{"operator in lower case", header + "spec:\n  endpointSelector: {matchExpressions: [{key: a, operator: in, values: [x]}]}\n", "spec.endpointSelector.matchExpressions[0].operator", `unknown operator "in" (did you mean "In"?)`},
		{"mutual authentication", header + `spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{}]
    authentication: {mode: required}
`, "spec.ingress[0].authentication", "authentication (mutual authentication) is not supported by ward"},
		{"egress mutual authentication", header + `spec:
  endpointSelector: {}
  egress:
  - toEndpoints: [{}]
    authentication: {mode: required}
`, "spec.egress[0].authentication", "not supported by ward"},
		{"toGroups without selection", header + `spec:
  endpointSelector: {}
  egress:
  - toGroups: [{aws: {region: eu-west-1}}]
`, "spec.egress[0].toGroups[0].aws", "needs labels, securityGroupsIds or securityGroupsNames"},
		{"toGroups without provider", header + `spec:
  endpointSelector: {}
  egress:
  - toGroups: [{}]
`, "spec.egress[0].toGroups[0]", "needs a provider (aws)"},
		{"toGroups with toEndpoints", header + `spec:
  endpointSelector: {}
  egress:
  - toGroups: [{aws: {securityGroupsIds: [sg-1]}}]
    toEndpoints: [{}]
`, "spec.egress[0]", "combining toEndpoints and toGroups in one rule is not supported"},
		{"l7 without l7proto", header + `spec:
  endpointSelector: {}
  egress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {l7: [{a: b}]}
`, "spec.egress[0].toPorts[0].rules.l7", "l7 needs l7proto"},
		{"host policy with http", "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p}\n" + `spec:
  nodeSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{}]}
`, "spec.ingress[0].toPorts[0].rules", "host policies (nodeSelector) support only DNS L7 rules"},
		{"too many ports", header + "spec:\n  endpointSelector: {}\n  egress:\n  - toPorts:\n    - ports: [" + strings.Repeat(`{port: "1"},`, 41) + "]\n", "spec.egress[0].toPorts[0].ports", "too many ports (41), the maximum is 40"},
		{"null list item", header + "spec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints:\n    -\n", "spec.ingress[0].fromEndpoints[0]", "must not be null"},
		{"null label value", header + "spec:\n  endpointSelector: {matchLabels: {app: }}\n", "spec.endpointSelector.matchLabels.app", "got null"},
		{"malformed yaml", "a: [\n", "", "malformed YAML"},
		{"not an object", "- 1\n- 2\n", "", "a policy must be an object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := parseErr(t, tt.doc)
			if err == nil {
				t.Fatal("no error")
			}
			for _, fe := range FieldErrors(err) {
				if fe.Path == tt.path && strings.Contains(fe.Msg, tt.msg) {
					if fe.File != "t.yaml" {
						t.Errorf("File = %q", fe.File)
					}
					return
				}
			}
			t.Errorf("no error at %q containing %q in:\n%v", tt.path, tt.msg, err)
		})
	}
}

func TestErrorMessageFormat(t *testing.T) {
	doc := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: secure-empire-kafka
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - {}
  - toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules: {kafka: [{role: produce, apiKey: produce}]}
`
	_, err := Parse("kafka.yaml", []byte(doc))
	want := "kafka.yaml: secure-empire-kafka: spec.ingress[1].toPorts[0].rules.kafka[0]: role and apiKey are mutually exclusive"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Path != "spec.ingress[1].toPorts[0].rules.kafka[0]" {
		t.Errorf("errors.As: %+v", fe)
	}
}

func TestAllErrorsReported(t *testing.T) {
	doc := header + `spec:
  endpointSelector: {}
  egres: []
  ingress:
  - toPorts:
    - ports: [{port: "99999"}]
  - toEntities: [world]
`
	err := parseErr(t, doc)
	if n := len(FieldErrors(err)); n != 3 {
		t.Errorf("got %d errors, want 3:\n%v", n, err)
	}
}

func TestWarnings(t *testing.T) {
	ps, err := Parse("w.yaml", []byte(header+`spec:
  endpointSelector: {}
  ingress:
  - fromRequires: [{matchLabels: {env: prod}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps[0].Warnings) != 1 || !strings.Contains(ps[0].Warnings[0].Msg, "deprecated") {
		t.Errorf("warnings = %v", ps[0].Warnings)
	}
}

func TestParseFormats(t *testing.T) {
	one := `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"a"},"spec":{"endpointSelector":{},"ingress":[{}]}}`
	for name, tt := range map[string]struct {
		doc  string
		want int
	}{
		"json object": {one, 1},
		"json array":  {"[" + one + "," + strings.Replace(one, `"a"`, `"b"`, 1) + "]", 2},
		"json list":   {`{"apiVersion":"v1","kind":"List","items":[` + one + `]}`, 1},
		"yaml multi":  {header + "spec: {endpointSelector: {}}\n---\n# comment\n---\n" + strings.Replace(header, "name: p", "name: q", 1) + "spec: {endpointSelector: {}}\n", 2},
		"empty":       {"\n# nothing\n", 0},
		"specs":       {header + "specs:\n- endpointSelector: {}\n- endpointSelector: {}\n", 1},
	} {
		t.Run(name, func(t *testing.T) {
			ps, err := Parse("f", []byte(tt.doc))
			if err != nil {
				t.Fatal(err)
			}
			if len(ps) != tt.want {
				t.Errorf("got %d policies, want %d", len(ps), tt.want)
			}
		})
	}
}

func TestNormalization(t *testing.T) {
	p, err := ParseOne("n", []byte(header+`spec:
  endpointSelector: {matchExpressions: [{key: a, operator: Exists}]}
  ingress:
  - toPorts:
    - ports: [{port: 80, protocol: tcp}, {port: HTTP}]
`))
	if err != nil {
		t.Fatal(err)
	}
	pp := p.Spec.Ingress[0].ToPorts[0].Ports
	if pp[0].Port != "80" || pp[0].Protocol != "TCP" || pp[1].Port != "http" || pp[1].Protocol != "ANY" {
		t.Errorf("ports = %+v", pp)
	}
	if p.Metadata.Namespace != "default" {
		t.Errorf("namespace = %q", p.Metadata.Namespace)
	}
}

func TestL7NeedsPorts(t *testing.T) {
	err := parseErr(t, header+`spec:
  endpointSelector: {}
  egress:
  - toPorts:
    - rules: {http: [{}]}
  - toPorts:
    - serverNames: [a.com]
`)
	n := 0
	for _, fe := range FieldErrors(err) {
		if strings.Contains(fe.Msg, "need explicit ports") {
			n++
		}
	}
	if n != 2 {
		t.Errorf("got %v", err)
	}
}

// TestToServicesWithoutSelector: Cilium accepts a toServices entry naming no
// service (it selects nothing) and prefers k8sServiceSelector when both are
// set; ward agrees, with a warning.
func TestToServicesWithoutSelector(t *testing.T) {
	for _, tc := range []struct{ name, entry, warn string }{
		{"empty", "{}", "selects nothing"},
		{"no name", "{k8sService: {namespace: x}}", "selects nothing"},
		{"both", "{k8sService: {serviceName: a}, k8sServiceSelector: {selector: {matchLabels: {x: z}}}}", "k8sServiceSelector is set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := Parse("s", []byte(header+"spec:\n  endpointSelector: {}\n  egress:\n  - toServices: ["+tc.entry+"]\n"))
			if err != nil || len(ps) != 1 {
				t.Fatalf("Parse: %v", err)
			}
			found := false
			for _, w := range ps[0].Warnings {
				found = found || strings.Contains(w.Msg, tc.warn)
			}
			if !found {
				t.Errorf("warnings %v, want one containing %q", ps[0].Warnings, tc.warn)
			}
		})
	}
}
