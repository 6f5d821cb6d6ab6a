package api

// EndpointConfigPath is the HTTP path (POST, with an EndpointConfig body)
// that changes a local endpoint's options at runtime, as `cilium endpoint
// config` does; {id} is the endpoint id. The answer is the endpoint's
// Endpoint status after the change.
const EndpointConfigPath = "/endpoint/{id}/config"

// EndpointConfig is the endpoint options `ward endpoint config` sets; a
// nil field is left as it is.
type EndpointConfig struct {
	// Audit turns policy audit mode on or off for the endpoint (Cilium's
	// PolicyAuditMode option), overriding the node's policyAuditMode until
	// wardd restarts.
	Audit *bool `json:"audit,omitempty"`
}

// FlowEvents counts the BPF datapath's flow events (drops and the policy
// verdicts of new flows).
type FlowEvents struct {
	// Read is the events wardd read from the datapath's ring.
	Read uint64 `json:"read"`
	// Lost is the events the datapath dropped because the ring was full
	// (it never waits for wardd).
	Lost uint64 `json:"lost"`
	// Malformed is the records that did not decode (a layout mismatch
	// between wardd and the loaded programs).
	Malformed uint64 `json:"malformed,omitempty"`
}
