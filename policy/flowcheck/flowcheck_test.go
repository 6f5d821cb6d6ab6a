package flowcheck

import (
	"strings"
	"testing"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy"
)

const pol = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: /ok}]}
  egress:
  - toFQDNs: [{matchName: api.example.com}]
`

func eval(t *testing.T, opts Options, flows string) []Result {
	t.Helper()
	ps, err := policy.Parse("p.yaml", []byte(pol))
	if err != nil {
		t.Fatal(err)
	}
	fl, err := ParseFlows([]byte(flows))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Evaluate(ps, fl, opts)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestEvaluate(t *testing.T) {
	res := eval(t, Options{}, `[
 {"name":"get ok","from":{"labels":{"app":"client"}},"to":{"labels":{"app":"web"}},"port":80,"http":{"method":"GET","path":"/ok"}},
 {"name":"get other","from":{"labels":{"app":"client"}},"to":{"labels":{"app":"web"}},"port":80,"http":{"method":"GET","path":"/other"}},
 {"name":"no request","from":{"labels":{"app":"client"}},"to":{"labels":{"app":"web"}},"port":80},
 {"name":"stranger","from":{"labels":{"app":"x"}},"to":{"labels":{"app":"web"}},"port":80},
 {"name":"fqdn ok","from":{"labels":{"app":"web"}},"to":{"fqdn":"API.example.com."},"port":443},
 {"name":"fqdn other","from":{"labels":{"app":"web"}},"to":{"fqdn":"other.example.com"},"port":443}
]`)
	want := []flow.Verdict{"allowed", "denied", "denied", "denied", "allowed", "denied"}
	for i, r := range res {
		if r.Verdict != want[i] {
			t.Errorf("%s: %s (%s), want %s", r.Name, r.Verdict, r.Reason, want[i])
		}
	}
	if !strings.Contains(res[1].Reason, "403") {
		t.Errorf("reason = %q", res[1].Reason)
	}
}

func TestAuditAndModes(t *testing.T) {
	flows := `[{"name":"stranger","from":{"labels":{"app":"x"}},"to":{"labels":{"app":"web"}},"port":80}]`
	if r := eval(t, Options{Audit: true}, flows)[0]; r.Verdict != "allowed" || !strings.Contains(r.Reason, "audit") {
		t.Errorf("audit: %+v", r)
	}
	if r := eval(t, Options{Mode: policy.ModeNever}, flows)[0]; r.Verdict != "allowed" {
		t.Errorf("never: %+v", r)
	}
	if r := eval(t, Options{Mode: policy.ModeAlways}, `[{"name":"x","from":{"labels":{"app":"x"}},"to":{"labels":{"app":"y"}},"port":80}]`)[0]; r.Verdict != "denied" {
		t.Errorf("always: %+v", r)
	}
}

func TestFlowErrors(t *testing.T) {
	for name, flows := range map[string]string{
		"unknown field":  `[{"name":"x","from":{"entity":"world"},"to":{"entity":"host"},"port":1,"extra":1}]`,
		"no name":        `[{"from":{"entity":"world"},"to":{"entity":"host"},"port":1}]`,
		"bad protocol":   `[{"name":"x","from":{"entity":"world"},"to":{"entity":"host"},"port":1,"protocol":"QUIC"}]`,
		"two L7":         `[{"name":"x","from":{"entity":"world"},"to":{"entity":"host"},"port":1,"http":{},"dns":{"query":"a"}}]`,
		"port range":     `[{"name":"x","from":{"entity":"world"},"to":{"entity":"host"},"port":70000}]`,
		"empty peer":     `[{"name":"x","from":{},"to":{"entity":"host"},"port":1}]`,
		"unknown labels": `[{"name":"x","from":{"labelz":{}},"to":{"entity":"host"},"port":1}]`,
	} {
		if _, err := ParseFlows([]byte(flows)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	ps, _ := policy.Parse("p.yaml", []byte(pol))
	fl, err := ParseFlows([]byte(`[{"name":"x","from":{"entity":"cluster"},"to":{"labels":{"app":"web"}},"port":1}]`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Evaluate(ps, fl, Options{}); err == nil || !strings.Contains(err.Error(), "not a single identity") {
		t.Errorf("entity cluster: %v", err)
	}
}
