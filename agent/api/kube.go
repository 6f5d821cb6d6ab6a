package api

import "time"

// Kubernetes is the state of the agent's Kubernetes sources (`ward
// status`): whether its view of the cluster is current, and how stale it
// is when the API server is unreachable (the last state stays enforced).
type Kubernetes struct {
	// Connected: the last probe of the API server answered ready.
	Connected bool `json:"connected"`
	// Synced: every watched resource has been listed once; SyncedAt when.
	Synced   bool      `json:"synced"`
	SyncedAt time.Time `json:"syncedAt,omitzero"`
	// LastContact is the last successful probe; DownSince the start of the
	// current outage (zero when connected).
	LastContact time.Time `json:"lastContact,omitzero"`
	DownSince   time.Time `json:"downSince,omitzero"`
	// StaleSeconds is how old the enforced view may be: the time since
	// LastContact while disconnected, 0 while connected.
	StaleSeconds float64 `json:"staleSeconds"`
	LastError    string  `json:"lastError,omitempty"`
	// Resources are the watched resources' object counts, by resource.
	Resources map[string]int `json:"resources,omitempty"`
	// NotServed are the watched custom resources the API server does not
	// serve (their CRDs are not installed): none of their objects exist.
	NotServed []string `json:"notServed,omitempty"`
	// InvalidPolicies are the policy objects whose current version is
	// invalid (their last good version, if any, stays enforced).
	InvalidPolicies []FileError `json:"invalidPolicies,omitempty"`
	// Pods are the pods that are endpoints (with an IP, not host network),
	// LocalPods those of this node.
	Pods      int `json:"pods"`
	LocalPods int `json:"localPods"`
	// Notes say what of the cluster is not enforced yet and why (pods
	// without an IP, local pods waiting for their interface).
	Notes []string `json:"notes,omitempty"`
}
