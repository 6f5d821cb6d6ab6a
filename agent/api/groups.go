package api

import "time"

// Derivative is the state of one policy with toGroups/fromGroups: the
// derivative policy carrying the addresses its groups resolved to.
type Derivative struct {
	// Policy is the parent policy's key.
	Policy string `json:"policy"`
	// Derivative is the derivative policy's key (empty until one was
	// made, or when the groups select no address).
	Derivative string   `json:"derivative,omitempty"`
	CIDRs      []string `json:"cidrs,omitempty"`
	// Refreshed is when the groups were last resolved.
	Refreshed time.Time `json:"refreshed,omitzero"`
	// Error is the last resolution's error (the last derivative stays).
	Error string `json:"error,omitempty"`
}
