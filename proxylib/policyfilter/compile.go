package policyfilter

import (
	"fmt"
	"strings"

	httpf "github.com/wardproxy/ward/filters/http"
	"github.com/wardproxy/ward/filters/kafka"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/proxylib"
	"github.com/wardproxy/ward/proxylib/npdsclient"
	"github.com/wardproxy/ward/xds/npds"
)

// Compile is the npdsclient.Compiler of ward's filters without a logger.
func Compile(r *npds.PortNetworkPolicyRule) (any, error) { return compile(r, nil) }

// compiler returns the npdsclient.Compiler of ward's filters: it turns a
// rule's L7 part into the matcher of its protocol (*httpf.Matcher or
// *kafkaL7). An HTTP rule that does not compile (a bad or over-long regex)
// disables only itself — it allows nothing — and is logged; the rest of
// the endpoint's policy stays in force (unlike cilium#41314).
func compiler(log proxylib.Logger) npdsclient.Compiler {
	return func(r *npds.PortNetworkPolicyRule) (any, error) { return compile(r, log) }
}

func compile(r *npds.PortNetworkPolicyRule, log proxylib.Logger) (any, error) {
	switch l7 := r.GetL7().(type) {
	case nil:
		return nil, nil
	case *npds.PortNetworkPolicyRule_HttpRules:
		rules := HTTPRules(l7.HttpRules)
		m, err := httpf.Compile(rules, nil)
		if err != nil {
			if m == nil {
				return nil, fmt.Errorf("http rules: %w", err)
			}
			if log != nil {
				log.Log(proxylib.LogError, "ward: http rules of "+r.GetName()+" partly disabled: "+err.Error())
			}
		}
		return m, nil
	case *npds.PortNetworkPolicyRule_KafkaRules:
		rules := make([]policy.PortRuleKafka, 0, len(l7.KafkaRules.GetKafkaRules()))
		for _, k := range l7.KafkaRules.GetKafkaRules() {
			rules = append(rules, policy.PortRuleKafka{Role: k.GetRole(), APIKey: k.GetApiKey(), APIVersion: k.GetApiVersion(), ClientID: k.GetClientId(), Topic: k.GetTopic()})
		}
		m, err := kafka.Compile(rules)
		if err != nil {
			return nil, fmt.Errorf("kafka rules: %w", err)
		}
		return &kafkaL7{m: m, rules: rules}, nil
	case *npds.PortNetworkPolicyRule_DnsRules:
		// DNS rules are enforced by wardd's DNS proxy, not inside Envoy.
		return nil, fmt.Errorf("dns rules cannot be enforced by the Envoy filters")
	default:
		return nil, fmt.Errorf("unsupported L7 rule type %T", l7)
	}
}

// HTTPRules converts the wire form of HTTP rules to the policy types the
// matcher compiles.
func HTTPRules(h *npds.HttpRules) []policy.PortRuleHTTP {
	rules := make([]policy.PortRuleHTTP, 0, len(h.GetHttpRules()))
	for _, r := range h.GetHttpRules() {
		pr := policy.PortRuleHTTP{Path: r.GetPath(), Method: r.GetMethod(), Host: r.GetHost(), Headers: r.GetHeaders()}
		for _, hm := range r.GetHeaderMatches() {
			m := &policy.HeaderMatch{Name: hm.GetName(), Value: hm.GetValue(), Mismatch: policy.MismatchAction(hm.GetMismatch())}
			if s := hm.GetSecret(); s != "" {
				ns, name, ok := strings.Cut(s, "/")
				if !ok {
					ns, name = "", s
				}
				m.Secret = &policy.Secret{Namespace: ns, Name: name}
			}
			pr.HeaderMatches = append(pr.HeaderMatches, m)
		}
		rules = append(rules, pr)
	}
	return rules
}
