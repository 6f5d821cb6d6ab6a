package policyfilter

import (
	"fmt"

	httpf "github.com/wardproxy/ward/filters/http"
	"github.com/wardproxy/ward/filters/kafka"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/proxylib"
	"github.com/wardproxy/ward/proxylib/npdsclient"
	"github.com/wardproxy/ward/xds/npds"
)

// Compile is the npdsclient.Compiler of ward's filters without a logger.
func Compile(r *npds.PortNetworkPolicyRule) (any, error) { return compile(r, nil) }

// compiler returns the npdsclient.Compiler of ward's filters: it decodes a
// rule's L7 part (the policy/l7 types, as the agent resolved them) and
// compiles it into the matcher of its protocol (*httpf.Matcher or
// *kafkaL7). Validation refuses everything these compilers reject, so an
// error here means an agent and a filter that disagree: the update is
// refused and the previous policy stays. An HTTP rule that does not
// compile all the same disables only itself — it allows nothing — and is
// logged; the rest of the endpoint's policy stays in force (unlike
// cilium#41314).
func compiler(log proxylib.Logger) npdsclient.Compiler {
	return func(r *npds.PortNetworkPolicyRule) (any, error) { return compile(r, log) }
}

func compile(r *npds.PortNetworkPolicyRule, log proxylib.Logger) (any, error) {
	if r.GetL7() == nil {
		return nil, nil
	}
	rules, err := r.GetL7().Decode()
	if err != nil {
		return nil, err
	}
	switch k := rules.Kind(); k {
	case l7.KindHTTP:
		m, err := httpf.Compile(rules.HTTP, nil)
		if err != nil {
			if m == nil {
				return nil, fmt.Errorf("http rules: %w", err)
			}
			if log != nil {
				log.Log(proxylib.LogError, "ward: http rules of "+r.GetName()+" partly disabled: "+err.Error())
			}
		}
		return m, nil
	case l7.KindKafka:
		m, err := kafka.Compile(rules.Kafka)
		if err != nil {
			return nil, fmt.Errorf("kafka rules: %w", err)
		}
		return &kafkaL7{m: m, rules: rules.Kafka}, nil
	case l7.KindGeneric:
		return compileGeneric(rules)
	case l7.KindDNS:
		// DNS rules are enforced by wardd's DNS proxy, not inside Envoy.
		return nil, fmt.Errorf("dns rules cannot be enforced by the Envoy filters")
	default:
		return nil, fmt.Errorf("l7 rules of no kind Envoy enforces (%s)", l7.Encode(rules))
	}
}
