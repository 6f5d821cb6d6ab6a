package policy

// This file holds the layer-7 rule types of the CiliumNetworkPolicy language
// (toPorts[].rules). Their JSON names are Cilium's (cilium.io/v2), so
// existing policies parse unchanged. The filters in filters/http,
// filters/kafka and filters/dns compile these types directly; changing a
// field here changes their input.

// L7Rules is the rules block of a toPorts entry. At most one of HTTP, Kafka
// and DNS (or L7Proto with L7) may be set on one port.
type L7Rules struct {
	HTTP    []PortRuleHTTP  `json:"http,omitempty"`
	Kafka   []PortRuleKafka `json:"kafka,omitempty"`
	DNS     []PortRuleDNS   `json:"dns,omitempty"`
	L7Proto string          `json:"l7proto,omitempty"`
	L7      []PortRuleL7    `json:"l7,omitempty"`
}

// PortRuleHTTP is one HTTP rule. Every non-empty field must match for the
// rule to match; an empty rule matches every request. Path, Method and Host
// are extended POSIX regular expressions matched against the whole value
// (anchored). Path is matched against the request's :path, query included.
type PortRuleHTTP struct {
	Path          string         `json:"path,omitempty"`
	Method        string         `json:"method,omitempty"`
	Host          string         `json:"host,omitempty"`
	Headers       []string       `json:"headers,omitempty"`
	HeaderMatches []*HeaderMatch `json:"headerMatches,omitempty"`
}

// MismatchAction says what to do with a request whose header differs from a
// HeaderMatch. The empty action denies the request.
type MismatchAction string

// The mismatch actions Cilium defines.
const (
	MismatchLog     MismatchAction = "LOG"
	MismatchAdd     MismatchAction = "ADD"
	MismatchDelete  MismatchAction = "DELETE"
	MismatchReplace MismatchAction = "REPLACE"
)

// HeaderMatch requires header Name to have Value, or the value held by
// Secret (the secret wins when both are set).
type HeaderMatch struct {
	Mismatch MismatchAction `json:"mismatch,omitempty"`
	Name     string         `json:"name"`
	Secret   *Secret        `json:"secret,omitempty"`
	Value    string         `json:"value,omitempty"`
}

// Secret references a Kubernetes-style secret by namespace and name.
type Secret struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

// PortRuleKafka is one Kafka rule. Role (produce|consume) and APIKey are
// mutually exclusive; APIVersion is a decimal string; Topic is at most 249
// characters of [a-zA-Z0-9._-]. An empty rule matches every request.
type PortRuleKafka struct {
	Role       string `json:"role,omitempty"`
	APIKey     string `json:"apiKey,omitempty"`
	APIVersion string `json:"apiVersion,omitempty"`
	ClientID   string `json:"clientID,omitempty"`
	Topic      string `json:"topic,omitempty"`
}

// PortRuleDNS is one DNS rule: an exact name or a pattern where '*' matches
// within one label ('*' alone matches every name, a leading '**.' any depth
// of subdomains).
type PortRuleDNS struct {
	MatchName    string `json:"matchName,omitempty"`
	MatchPattern string `json:"matchPattern,omitempty"`
}

// PortRuleL7 is one rule of a generic L7 protocol named by L7Rules.L7Proto:
// key/value pairs the protocol's parser interprets.
type PortRuleL7 map[string]string
