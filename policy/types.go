// Package policy is ward's policy engine: the CiliumNetworkPolicy and
// CiliumClusterwideNetworkPolicy language (apiVersion cilium.io/v2), its
// parsing and validation with field paths, label selectors, numeric security
// identities, and the resolution of all policies into the per-endpoint model
// the datapath and the L7 filters consume.
//
// The package is pure: it reads bytes and returns values. Effects (BPF maps,
// xDS, the DNS proxy) live elsewhere. The flow is:
//
//	Parse(file, data)                 -> []*Policy (validated)
//	Repository.Upsert / UpsertEndpoint -> state
//	Repository.Snapshot()             -> *Snapshot (immutable)
//	Snapshot.Endpoint(id)             -> *EndpointPolicy: per direction the
//	                                     enforcement, L3/L4 entries, proxy ports
//	                                     and their L7 rules
package policy

import "errors"

// API version and kinds accepted by Parse.
const (
	APIVersion      = "cilium.io/v2"
	KindCNP         = "CiliumNetworkPolicy"
	KindCCNP        = "CiliumClusterwideNetworkPolicy"
	kindCNPList     = "CiliumNetworkPolicyList"
	kindCCNPList    = "CiliumClusterwideNetworkPolicyList"
	kindList        = "List"
	defaultNSForCNP = "default"
)

// Policy is one CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy object
// as read from a file. Parse returns it validated and normalized (selectors
// carry their namespace, protocols are upper case, port names lower case).
// A Policy must not be modified after it was handed to a Repository.
type Policy struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   ObjectMeta `json:"metadata"`
	Spec       *Rule      `json:"spec,omitempty"`
	Specs      []*Rule    `json:"specs,omitempty"`
	Status     rawJSON    `json:"status,omitempty"`

	// File is the file the policy was read from (for messages); empty when
	// the policy did not come from a file.
	File string `json:"-"`
	// Warnings are non-fatal findings (deprecated fields, ignored options).
	Warnings []*FieldError `json:"-"`
	// Gated lists the uses of constructs Cilium accepts only behind an
	// agent option (see Features, CheckFeatures).
	Gated []FeatureUse `json:"-"`
}

// Feature is a policy construct Cilium accepts only behind an agent
// option.
type Feature string

// Gated features, named after Cilium's options.
const (
	// FeatureNodeSelectorLabels: fromNodes/toNodes need
	// enable-node-selector-labels.
	FeatureNodeSelectorLabels Feature = "enableNodeSelectorLabels"
	// FeatureExtendedIPProtocols: protocols VRRP and IGMP need
	// enable-extended-ip-protocols.
	FeatureExtendedIPProtocols Feature = "enableExtendedIPProtocols"
)

// FeatureUse is one use of a gated feature at a field path.
type FeatureUse struct {
	Feature Feature
	Path    string
}

// Features are the agent options that gated constructs need.
type Features struct {
	NodeSelectorLabels  bool
	ExtendedIPProtocols bool
}

// CheckFeatures reports, as field errors naming the path and the option,
// every gated construct p uses while its option is off. A caller that
// applies policies (the agent) refuses p when it returns an error, as
// Cilium refuses such a policy.
func (p *Policy) CheckFeatures(f Features) error {
	var errs []error
	for _, u := range p.Gated {
		on := false
		what := ""
		switch u.Feature {
		case FeatureNodeSelectorLabels:
			on, what = f.NodeSelectorLabels, "fromNodes/toNodes need the node option enableNodeSelectorLabels (Cilium's --enable-node-selector-labels)"
		case FeatureExtendedIPProtocols:
			on, what = f.ExtendedIPProtocols, "protocols VRRP and IGMP need the node option enableExtendedIPProtocols (Cilium's --enable-extended-ip-protocols)"
		}
		if !on {
			errs = append(errs, &FieldError{File: p.File, Policy: p.Metadata.Name, Path: u.Path, Msg: what})
		}
	}
	return errors.Join(errs...)
}

// ObjectMeta is the subset of Kubernetes object metadata a policy file may
// carry. Fields ward does not use are accepted and ignored.
type ObjectMeta struct {
	Name              string            `json:"name"`
	Namespace         string            `json:"namespace,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
	UID               string            `json:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion,omitempty"`
	Generation        int64             `json:"generation,omitempty"`
	CreationTimestamp rawJSON           `json:"creationTimestamp,omitempty"`
	ManagedFields     rawJSON           `json:"managedFields,omitempty"`
	OwnerReferences   rawJSON           `json:"ownerReferences,omitempty"`
	Finalizers        []string          `json:"finalizers,omitempty"`
	GenerateName      string            `json:"generateName,omitempty"`
}

// Key identifies a policy in a Repository: kind, namespace (empty for a
// clusterwide policy) and name.
type Key struct {
	Kind      string
	Namespace string
	Name      string
}

func (k Key) String() string {
	if k.Namespace == "" {
		return k.Kind + "/" + k.Name
	}
	return k.Kind + "/" + k.Namespace + "/" + k.Name
}

// Key returns the repository key of p.
func (p *Policy) Key() Key {
	return Key{Kind: p.Kind, Namespace: p.Metadata.Namespace, Name: p.Metadata.Name}
}

// Clusterwide reports whether p is a CiliumClusterwideNetworkPolicy.
func (p *Policy) Clusterwide() bool { return p.Kind == KindCCNP }

// Rules returns spec followed by specs.
func (p *Policy) Rules() []*Rule {
	var out []*Rule
	if p.Spec != nil {
		out = append(out, p.Spec)
	}
	return append(out, p.Specs...)
}

// Rule is one policy rule (a spec): the endpoints it applies to and what
// they may send and receive.
type Rule struct {
	// EndpointSelector selects the endpoints the rule applies to. In a
	// CiliumNetworkPolicy it is limited to the policy's namespace.
	EndpointSelector *EndpointSelector `json:"endpointSelector,omitempty"`
	// NodeSelector selects nodes (host policies); clusterwide only.
	NodeSelector *EndpointSelector `json:"nodeSelector,omitempty"`

	Ingress     []IngressRule     `json:"ingress,omitempty"`
	IngressDeny []IngressDenyRule `json:"ingressDeny,omitempty"`
	Egress      []EgressRule      `json:"egress,omitempty"`
	EgressDeny  []EgressDenyRule  `json:"egressDeny,omitempty"`

	// EnableDefaultDeny overrides, per direction, whether this rule puts
	// the endpoints it selects into default-deny. Unset: on when the rule
	// has a section for that direction.
	EnableDefaultDeny DefaultDenyConfig `json:"enableDefaultDeny,omitempty"`

	Labels      []RuleLabel `json:"labels,omitempty"`
	Description string      `json:"description,omitempty"`
	Log         *LogConfig  `json:"log,omitempty"`
}

// DefaultDenyConfig is Rule.EnableDefaultDeny.
type DefaultDenyConfig struct {
	Ingress *bool `json:"ingress,omitempty"`
	Egress  *bool `json:"egress,omitempty"`
}

// RuleLabel is one entry of Rule.Labels.
type RuleLabel struct {
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
	Source string `json:"source,omitempty"`
}

// LogConfig is Rule.Log (accepted, used only as a flow-record tag).
type LogConfig struct {
	Value string `json:"value,omitempty"`
}

// EndpointSelector is a Kubernetes label selector over endpoint labels.
// Keys may carry a label source ("k8s:app", "reserved:host"); a key without
// a source matches labels of any source. An empty selector selects all.
type EndpointSelector struct {
	MatchLabels      map[string]string          `json:"matchLabels,omitempty"`
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// LabelSelectorRequirement is one matchExpressions entry.
type LabelSelectorRequirement struct {
	Key      string   `json:"key"`
	Operator string   `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// Selector operators.
const (
	OpIn           = "In"
	OpNotIn        = "NotIn"
	OpExists       = "Exists"
	OpDoesNotExist = "DoesNotExist"
)

// IngressRule allows traffic into the selected endpoints. Peers (from*)
// are alternatives; with none the rule applies to every peer. ToPorts
// restricts the ports; with none every port is allowed.
type IngressRule struct {
	FromEndpoints []EndpointSelector `json:"fromEndpoints,omitempty"`
	// FromRequires is deprecated (Cilium 1.17): every peer must also match
	// all of these selectors, for all rules selecting the endpoint.
	FromRequires   []EndpointSelector `json:"fromRequires,omitempty"`
	FromCIDR       []string           `json:"fromCIDR,omitempty"`
	FromCIDRSet    []CIDRRule         `json:"fromCIDRSet,omitempty"`
	FromEntities   []string           `json:"fromEntities,omitempty"`
	FromNodes      []EndpointSelector `json:"fromNodes,omitempty"`
	FromGroups     []Groups           `json:"fromGroups,omitempty"`
	ToPorts        []PortRule         `json:"toPorts,omitempty"`
	ICMPs          []ICMPRule         `json:"icmps,omitempty"`
	Authentication *Authentication    `json:"authentication,omitempty"`
}

// IngressDenyRule denies traffic into the selected endpoints. It has no L7.
type IngressDenyRule struct {
	FromEndpoints []EndpointSelector `json:"fromEndpoints,omitempty"`
	FromRequires  []EndpointSelector `json:"fromRequires,omitempty"`
	FromCIDR      []string           `json:"fromCIDR,omitempty"`
	FromCIDRSet   []CIDRRule         `json:"fromCIDRSet,omitempty"`
	FromEntities  []string           `json:"fromEntities,omitempty"`
	FromNodes     []EndpointSelector `json:"fromNodes,omitempty"`
	FromGroups    []Groups           `json:"fromGroups,omitempty"`
	ToPorts       []PortRule         `json:"toPorts,omitempty"`
	ICMPs         []ICMPRule         `json:"icmps,omitempty"`
}

// EgressRule allows traffic out of the selected endpoints.
type EgressRule struct {
	ToEndpoints []EndpointSelector `json:"toEndpoints,omitempty"`
	// ToRequires is deprecated (Cilium 1.17); see IngressRule.FromRequires.
	ToRequires     []EndpointSelector `json:"toRequires,omitempty"`
	ToCIDR         []string           `json:"toCIDR,omitempty"`
	ToCIDRSet      []CIDRRule         `json:"toCIDRSet,omitempty"`
	ToEntities     []string           `json:"toEntities,omitempty"`
	ToServices     []Service          `json:"toServices,omitempty"`
	ToNodes        []EndpointSelector `json:"toNodes,omitempty"`
	ToGroups       []Groups           `json:"toGroups,omitempty"`
	ToFQDNs        []FQDNSelector     `json:"toFQDNs,omitempty"`
	ToPorts        []PortRule         `json:"toPorts,omitempty"`
	ICMPs          []ICMPRule         `json:"icmps,omitempty"`
	Authentication *Authentication    `json:"authentication,omitempty"`
}

// EgressDenyRule denies traffic out of the selected endpoints. It has no L7
// and no toFQDNs (ToFQDNs is decoded only to report a clear error).
type EgressDenyRule struct {
	ToEndpoints []EndpointSelector `json:"toEndpoints,omitempty"`
	ToRequires  []EndpointSelector `json:"toRequires,omitempty"`
	ToCIDR      []string           `json:"toCIDR,omitempty"`
	ToCIDRSet   []CIDRRule         `json:"toCIDRSet,omitempty"`
	ToEntities  []string           `json:"toEntities,omitempty"`
	ToServices  []Service          `json:"toServices,omitempty"`
	ToNodes     []EndpointSelector `json:"toNodes,omitempty"`
	ToGroups    []Groups           `json:"toGroups,omitempty"`
	ToFQDNs     []FQDNSelector     `json:"toFQDNs,omitempty"`
	ToPorts     []PortRule         `json:"toPorts,omitempty"`
	ICMPs       []ICMPRule         `json:"icmps,omitempty"`
}

// Authentication is accepted for compatibility; ward does not enforce
// mutual authentication and reports a warning.
type Authentication struct {
	Mode string `json:"mode"`
}

// CIDRRule is a CIDR with exceptions (fromCIDRSet / toCIDRSet).
type CIDRRule struct {
	CIDR              string            `json:"cidr,omitempty"`
	CIDRGroupRef      string            `json:"cidrGroupRef,omitempty"`
	CIDRGroupSelector *EndpointSelector `json:"cidrGroupSelector,omitempty"`
	Except            []string          `json:"except,omitempty"`
}

// FQDNSelector selects the IPs the DNS proxy learnt for matching names.
// Exactly one of MatchName and MatchPattern is set.
type FQDNSelector struct {
	MatchName    string `json:"matchName,omitempty"`
	MatchPattern string `json:"matchPattern,omitempty"`
}

// Service selects the backends of Kubernetes services (toServices).
type Service struct {
	K8sService         *K8sServiceNamespace         `json:"k8sService,omitempty"`
	K8sServiceSelector *K8sServiceSelectorNamespace `json:"k8sServiceSelector,omitempty"`
}

// K8sServiceNamespace names one service.
type K8sServiceNamespace struct {
	ServiceName string `json:"serviceName,omitempty"`
	Namespace   string `json:"namespace,omitempty"`
}

// K8sServiceSelectorNamespace selects services by their labels.
type K8sServiceSelectorNamespace struct {
	Selector  EndpointSelector `json:"selector"`
	Namespace string           `json:"namespace,omitempty"`
}

// PortRule is one toPorts entry: ports plus optional TLS and L7 rules.
type PortRule struct {
	Ports          []PortProtocol `json:"ports,omitempty"`
	TerminatingTLS *TLSContext    `json:"terminatingTLS,omitempty"`
	OriginatingTLS *TLSContext    `json:"originatingTLS,omitempty"`
	ServerNames    []string       `json:"serverNames,omitempty"`
	Listener       rawJSON        `json:"listener,omitempty"`
	Rules          *L7Rules       `json:"rules,omitempty"`
}

// PortProtocol is one port (number or IANA service name), an optional end
// of range and a protocol (TCP, UDP, SCTP or ANY; empty means ANY).
type PortProtocol struct {
	Port     PortString `json:"port,omitempty"`
	EndPort  int32      `json:"endPort,omitempty"`
	Protocol string     `json:"protocol,omitempty"`
}

// PortString is a port number or name. It decodes from a JSON string or
// number (YAML `port: 80` and `port: "80"` both work).
type PortString string

// TLSContext references a secret holding TLS material (ca.crt, tls.crt,
// tls.key by default).
type TLSContext struct {
	Secret      *Secret `json:"secret"`
	TrustedCA   string  `json:"trustedCA,omitempty"`
	Certificate string  `json:"certificate,omitempty"`
	PrivateKey  string  `json:"privateKey,omitempty"`
}

// ICMPRule is one icmps entry.
type ICMPRule struct {
	Fields []ICMPField `json:"fields,omitempty"`
}

// ICMPField is an ICMP type (number or CamelCase name) in a family (IPv4 by
// default, or IPv6).
type ICMPField struct {
	Family string     `json:"family,omitempty"`
	Type   PortString `json:"type"`
}

// Groups selects the addresses of a cloud provider's resources (Cilium's
// toGroups/fromGroups). The agent resolves them (policy/groups) into a
// derivative policy with toCIDRSet/fromCIDRSet; the rule itself selects
// nothing.
type Groups struct {
	AWS *AWSGroup `json:"aws,omitempty"`
}

// AWSGroup selects EC2 network interfaces by security group (id or name)
// and instances by tags; Region overrides the provider's region.
type AWSGroup struct {
	Labels              map[string]string `json:"labels,omitempty"`
	SecurityGroupsIds   []string          `json:"securityGroupsIds,omitempty"`
	SecurityGroupsNames []string          `json:"securityGroupsNames,omitempty"`
	Region              string            `json:"region,omitempty"`
}

// HasGroups reports whether p has toGroups or fromGroups rules.
func (p *Policy) HasGroups() bool {
	for _, r := range p.Rules() {
		for _, in := range r.Ingress {
			if len(in.FromGroups) > 0 {
				return true
			}
		}
		for _, in := range r.IngressDeny {
			if len(in.FromGroups) > 0 {
				return true
			}
		}
		for _, e := range r.Egress {
			if len(e.ToGroups) > 0 {
				return true
			}
		}
		for _, e := range r.EgressDeny {
			if len(e.ToGroups) > 0 {
				return true
			}
		}
	}
	return false
}
