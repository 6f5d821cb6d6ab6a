// Package api holds the types wardd serves on its status socket and the
// ward CLI reads: one definition on both sides of the process boundary.
// It depends on nothing but the standard library.
package api

// StatusPath is the HTTP path of the status document on wardd.sock.
const StatusPath = "/status"

// Socket is the file name of wardd's status socket in its state directory.
const Socket = "wardd.sock"

// Status is what `ward status` shows.
type Status struct {
	Node    string            `json:"node"`
	Streams int64             `json:"xdsStreams"`
	Acked   map[string]string `json:"acked"`
	NACKs   []NACK            `json:"nacks,omitempty"`
	Envoy   *Envoy            `json:"envoy,omitempty"`
	// Policy is the state of the policy sources.
	Policy *Policy `json:"policy,omitempty"`
	// Kubernetes is the state of the Kubernetes sources (with a
	// kubernetes block).
	Kubernetes *Kubernetes `json:"kubernetes,omitempty"`
	// Endpoints are the local endpoints and their datapath state.
	Endpoints []Endpoint `json:"endpoints,omitempty"`
	// Errors are the errors of the last publish (a consumer that could not
	// apply part of the policy: a TLS rule whose secret is missing, an
	// ipcache write); the affected part is left fail-closed.
	Errors []string `json:"errors,omitempty"`
	// EndpointFiles are the files of the endpoints and services
	// directories that failed to load (what they held stays as it was).
	EndpointFiles []FileError `json:"endpointFiles,omitempty"`
	// Delivery is, per policy resource type, how many resources the proxy
	// applied and which it has not (yet): rejected ones with the proxy's
	// error (it keeps their previous version) and ones still in flight.
	Delivery map[string]Delivery `json:"delivery,omitempty"`
	// FlowEvents counts the BPF datapath's flow events (nil without the
	// datapath).
	FlowEvents *FlowEvents `json:"flowEvents,omitempty"`
	// ToGroups are the policies with toGroups/fromGroups and their
	// derivatives.
	ToGroups []Derivative `json:"toGroups,omitempty"`
}

// Delivery is the proxy's state of one policy resource type.
type Delivery struct {
	Total int `json:"total"`
	Acked int `json:"acked"`
	// NotApplied are the resources whose current version the proxy has not
	// applied.
	NotApplied []Resource `json:"notApplied,omitempty"`
}

// Resource is one policy resource as the proxy holds it.
type Resource struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Error   string `json:"error,omitempty"`
}

// NACK is Envoy's last rejection of a resource type.
type NACK struct {
	TypeURL string `json:"typeURL"`
	Version string `json:"version"`
	Message string `json:"message"`
}

// Envoy is the supervised Envoy process.
type Envoy struct {
	PID    int `json:"pid"`
	Starts int `json:"starts"`
	// Adopted counts the running Envoys this agent took over from its
	// predecessor (a restart of wardd does not restart Envoy).
	Adopted   int    `json:"adopted,omitempty"`
	LastError string `json:"lastError,omitempty"`
}

// Policy is the state of the policy directory.
type Policy struct {
	Dir string `json:"dir,omitempty"`
	// Revision is the repository revision last published.
	Revision uint64 `json:"revision"`
	// Error is the last scan's error (a missing or unreadable directory,
	// or the files below); empty when every file is in force as is.
	Error string `json:"error,omitempty"`
	// Errors are the files that failed to load, with their error; their
	// last good content (if any) stays enforced.
	Errors []FileError `json:"errors,omitempty"`
}

// FileError is one policy file that failed to load.
type FileError struct {
	File  string `json:"file"`
	Error string `json:"error"`
}

// Endpoint is a local endpoint as the agent enforces it.
type Endpoint struct {
	Name     string   `json:"name"`
	ID       uint64   `json:"id"`
	Identity uint32   `json:"identity"`
	IPs      []string `json:"ips,omitempty"`
	// State is the endpoint's lifecycle state: one of the State*
	// constants (introspect.go), Cilium's states plus ward's
	// "waiting-for-interface" and "locked-down" (Error says why).
	State string `json:"state"`
	Error string `json:"error,omitempty"`
	// EnforceIngress and EnforceEgress say whether policy is enforced in
	// the direction (some policy selects the endpoint there, or the
	// enforcement mode is always).
	EnforceIngress bool `json:"enforceIngress"`
	EnforceEgress  bool `json:"enforceEgress"`
	// Audit is policy audit mode (Cilium's PolicyAuditMode): would-be
	// drops pass and are recorded with verdict AUDIT, at L3/L4 and L7.
	// It is on when the node config's policyAuditMode is, or when
	// `ward endpoint config <id> audit=on` turned it on for the endpoint.
	Audit bool `json:"audit"`
}
