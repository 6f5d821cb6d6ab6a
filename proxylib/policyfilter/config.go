// Package policyfilter holds ward's policy filters as Envoy sees them: the
// glue between proxylib's filter interfaces (called by proxylib/abi), the
// policy subscription (proxylib/npdsclient) and the protocol matchers in
// filters/*. For each request or connection it finds the endpoint whose
// policy applies, the remote identity, and the rules of the port, then asks
// the protocol's matcher; it fails closed whenever any of these is missing.
package policyfilter

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/wardproxy/ward/proxylib"
	"github.com/wardproxy/ward/proxylib/npdsclient"
)

// Config is the JSON filter_config of ward's policy filters.
type Config struct {
	// XDSSocket and Node locate the policy subscription (wardd's socket).
	XDSSocket string `json:"xds_socket"`
	Node      string `json:"node"`
	// Direction is "ingress" (default) or "egress": whose policy applies.
	// Ingress: the endpoint that owns the connection's local (original
	// destination) address, remote = the source. Egress: the endpoint that
	// owns the source address, remote = the destination.
	Direction string `json:"direction,omitempty"`
	// Endpoint names the policy to enforce regardless of addresses; for
	// non-transparent listeners (tests, benchmarks, the demo).
	Endpoint string `json:"endpoint,omitempty"`
	// Port overrides the destination port used for the policy lookup; for
	// non-transparent listeners.
	Port uint16 `json:"port,omitempty"`
	// RemoteIdentity, when set, is the identity of every peer of this
	// listener instead of the identity table's answer. It is for listeners
	// that clients reach directly (tests, demos, benchmarks: one listener
	// per client identity), never for transparent listeners.
	RemoteIdentity uint32 `json:"remote_identity,omitempty"`
	// AccessLog, when set, receives one JSON flow record per decision.
	AccessLog string `json:"access_log,omitempty"`
	// FlowSocket, when set, is wardd's flow socket: flow records are
	// shipped there (flows.go), batched and never waited for.
	FlowSocket string `json:"flow_socket,omitempty"`
	// RecordQuery keeps HTTP query strings in flow records; by default
	// they are redacted (filters/http.RecordPath).
	RecordQuery bool `json:"record_query,omitempty"`
	// Kafka holds ward.kafka's memory bounds (kafka.go).
	Kafka KafkaOptions `json:"kafka,omitzero"`
	// WaitFirstPolicyMS: creating the configuration waits up to this long
	// for the policy subscription's first complete state (wardd sets it),
	// so a new listener never answers its first requests without a
	// policy; 0 does not wait. The wait happens once per process.
	WaitFirstPolicyMS uint32 `json:"wait_first_policy_ms,omitempty"`
}

func parseConfig(b []byte) (Config, error) {
	var c Config
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("filter_config: %w", err)
	}
	var errs []error
	if c.XDSSocket == "" {
		errs = append(errs, errors.New("filter_config.xds_socket is required"))
	}
	if c.Node == "" {
		errs = append(errs, errors.New("filter_config.node is required"))
	}
	switch c.Direction {
	case "", "ingress", "egress":
	default:
		errs = append(errs, fmt.Errorf("filter_config.direction %q: want ingress or egress", c.Direction))
	}
	return c, errors.Join(errs...)
}

func (c Config) ingress() bool { return c.Direction != "egress" }

// WorldIdentity is the reserved identity of addresses outside the cluster
// (Cilium's "world", 2); an address absent from the identity table is
// world.
const WorldIdentity = 2

// target is what one decision needs: the endpoint, the remote identity and
// the port, resolved from the connection's addresses.
type target struct {
	ep       *npdsclient.Endpoint
	remoteID uint32
	port     uint16
	local    netip.AddrPort
	remote   netip.AddrPort
	reason   string // why ep is nil
}

func (c Config) resolve(st *npdsclient.State, a proxylib.ConnAddrs) target {
	var t target
	t.local, _ = netip.ParseAddrPort(a.Local)
	t.remote, _ = netip.ParseAddrPort(a.Remote)
	t.port = t.local.Port()
	if c.Port != 0 {
		t.port = c.Port
	}
	var ok bool
	peer := t.remote.Addr()
	switch {
	case c.Endpoint != "":
		t.ep, ok = st.Endpoint(c.Endpoint)
		if !c.ingress() {
			peer = t.local.Addr()
		}
	case c.ingress():
		t.ep, ok = st.EndpointByIP(t.local.Addr())
	default:
		t.ep, ok = st.EndpointByIP(t.remote.Addr())
		peer = t.local.Addr()
	}
	if !ok {
		t.reason = "no policy for the endpoint"
	}
	t.remoteID = c.identity(st, peer)
	return t
}

// identity returns the identity of a peer address.
func (c Config) identity(st *npdsclient.State, ip netip.Addr) uint32 {
	if c.RemoteIdentity != 0 {
		return c.RemoteIdentity
	}
	if id, ok := st.Identity(ip); ok {
		return id
	}
	return WorldIdentity
}
