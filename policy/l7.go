package policy

import "github.com/wardproxy/ward/policy/l7"

// The layer-7 rule types of the CiliumNetworkPolicy language
// (toPorts[].rules) are defined once, in package policy/l7, shared with the
// xDS translation, the filters inside Envoy and the DNS proxy (see that
// package's doc for why). These aliases keep the policy language readable
// from this package; they are the same types.
type (
	// L7Rules is the rules block of a toPorts entry.
	L7Rules = l7.Rules
	// PortRuleHTTP is one HTTP rule.
	PortRuleHTTP = l7.HTTPRule
	// HeaderMatch is one headerMatches entry of an HTTP rule.
	HeaderMatch = l7.HeaderMatch
	// MismatchAction is a HeaderMatch's mismatch action.
	MismatchAction = l7.MismatchAction
	// Secret references a Kubernetes-style secret.
	Secret = l7.Secret
	// PortRuleKafka is one Kafka rule.
	PortRuleKafka = l7.KafkaRule
	// PortRuleDNS is one DNS rule.
	PortRuleDNS = l7.DNSRule
	// PortRuleL7 is one rule of a generic L7 protocol.
	PortRuleL7 = l7.GenericRule
)

// The mismatch actions Cilium defines.
const (
	MismatchLog     = l7.MismatchLog
	MismatchAdd     = l7.MismatchAdd
	MismatchDelete  = l7.MismatchDelete
	MismatchReplace = l7.MismatchReplace
)
