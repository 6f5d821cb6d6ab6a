package api

import (
	"encoding/json"
	"time"
)

// The read-only introspection API of wardd's status socket: what `ward
// endpoint`, `ward policy get`, `ward identity`, `ward ip list` and `ward
// fqdn cache list` show. Every path answers GET with JSON.
const (
	// EndpointsPath lists the local endpoints ([]EndpointDetail);
	// EndpointsPath + "/{id}" is one (EndpointDetail, 404 when unknown).
	EndpointsPath = "/v1/endpoints"
	// PolicyPath is the policy in force (PolicyRules); repeated `labels`
	// query parameters keep only the rules carrying every one of them.
	PolicyPath = "/v1/policy"
	// IdentitiesPath lists the identities ([]Identity); IdentitiesPath +
	// "/{id}" is one (Identity, 404 when unknown).
	IdentitiesPath = "/v1/identities"
	// IPCachePath is the ipcache: prefix → identity ([]IPCacheEntry).
	IPCachePath = "/v1/ipcache"
	// FQDNCachePath is the DNS proxy's cache ([]FQDNEntry; 404 without a
	// DNS proxy).
	FQDNCachePath = "/v1/fqdn/cache"
)

// Endpoint lifecycle states (the seed's "Endpoint Lifecycle"), plus ward's
// own two for an endpoint whose datapath could not be programmed.
const (
	// StateRestoring: wardd restarted over pinned maps that hold the
	// endpoint; its previous policy keeps enforcing until the first
	// publish rewrites it.
	StateRestoring = "restoring"
	// StateWaitingForIdentity: the policy repository has no identity for
	// the endpoint (yet).
	StateWaitingForIdentity = "waiting-for-identity"
	// StateWaitingToRegenerate: the endpoint has an identity and a policy
	// (its labels, a policy or an identity it selects changed) that the
	// datapath and the proxy have not been given yet.
	StateWaitingToRegenerate = "waiting-to-regenerate"
	// StateRegenerating: a publish is writing the endpoint's policy.
	StateRegenerating = "regenerating"
	// StateReady: the endpoint's policy is in the datapath and the proxy's
	// resources.
	StateReady = "ready"
	// StateDisconnecting: the endpoint was removed from the node's
	// endpoints; its datapath entries go at the next publish.
	StateDisconnecting = "disconnecting"
	// StateDisconnected: the endpoint was deleted (never listed: a
	// deleted endpoint is gone from the list).
	StateDisconnected = "disconnected"
	// StateWaitingForInterface (ward): the endpoint's interface does not
	// exist; its policy is ready and none of its traffic passes the node.
	StateWaitingForInterface = "waiting-for-interface"
	// StateLockedDown (ward, as Cilium's lockdown): programming the
	// endpoint's policy failed; all its traffic is dropped.
	StateLockedDown = "locked-down"
)

// EndpointDetail is a local endpoint as `ward endpoint list|get` shows it:
// its status (state, identity, enforcement, audit mode) plus labels and
// the rules in force.
type EndpointDetail struct {
	Endpoint
	Namespace string `json:"namespace,omitempty"`
	// Labels are the endpoint's identity labels (source:key=value).
	Labels    []string `json:"labels,omitempty"`
	Interface string   `json:"interface,omitempty"`
	// PolicyRevision is the policy revision the endpoint's state was
	// published with (0 before its first publish).
	PolicyRevision uint64 `json:"policyRevision"`
	// Rules are the policy rules that give the endpoint entries, with
	// their source (only in `ward endpoint get`).
	Rules []RuleRef `json:"rules,omitempty"`
}

// RuleRef names one rule of a policy in force.
type RuleRef struct {
	// Policy is "Kind/namespace/name" (no namespace when clusterwide).
	Policy string `json:"policy"`
	// Paths are the rule's sections that contribute, e.g. spec.ingress[0].
	Paths []string `json:"paths"`
	// Source is where the rule came from: "directory" or "k8s".
	Source string `json:"source"`
	// Origin is the file (directory) or the Kubernetes object.
	Origin string `json:"origin,omitempty"`
	// Labels are the rule's labels (source:key=value), the derived ones
	// (io.cilium.k8s.policy.name, ...) included.
	Labels []string `json:"labels"`
}

// PolicyRules is the policy in force: the rules of every policy, each
// with its labels (the shape of Cilium's `cilium policy get`) and source.
type PolicyRules struct {
	Revision uint64       `json:"revision"`
	Rules    []PolicyRule `json:"rules"`
}

// PolicyRule is one rule of a policy in force.
type PolicyRule struct {
	// Rule is the rule as written (the JSON of a CiliumNetworkPolicy
	// spec), its labels set to Labels in Cilium's {key, value, source}
	// form.
	Rule   json.RawMessage `json:"rule"`
	Policy string          `json:"policy"`
	Source string          `json:"source"`
	Origin string          `json:"origin,omitempty"`
	// Labels are source:key=value.
	Labels []string `json:"labels"`
}

// Identity is a numeric security identity and its labels.
type Identity struct {
	ID     uint32   `json:"id"`
	Labels []string `json:"labels"`
	// Kind is reserved, endpoint, cidr or fqdn.
	Kind string `json:"kind"`
}

// IPCacheEntry is one prefix of the ipcache.
type IPCacheEntry struct {
	Prefix   string `json:"prefix"`
	Identity uint32 `json:"identity"`
	// Source is the owner whose claim is in force: endpoint, cidr or
	// fqdn (node addresses are endpoint claims).
	Source string `json:"source"`
	// Labels are the identity's labels.
	Labels []string `json:"labels,omitempty"`
}

// FQDNEntry is one name an endpoint resolved and one IP the answer gave.
type FQDNEntry struct {
	Endpoint uint64    `json:"endpoint"`
	Name     string    `json:"name"`
	IP       string    `json:"ip"`
	Expires  time.Time `json:"expires"`
	// Zombie: the TTL ended and the IP is kept because a connection of
	// the endpoint still uses it.
	Zombie bool `json:"zombie,omitempty"`
}
