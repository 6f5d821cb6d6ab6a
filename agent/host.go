package agent

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/policy"
)

// The host endpoint: the node's own addresses carry the host identity in
// the ipcache, the other nodes' addresses (datapath.remoteNodes) the remote-node
// identity, so fromEntities/toEntities host and remote-node resolve to real
// addresses (datapath.remoteNodes), and health the health endpoints'
// (datapath.healthAddresses); with datapath.allowLocalhost (the default, as Cilium's
// allow-localhost) the host reaches every local endpoint whatever its
// ingress policy, so probes keep working under default deny.

// hostAddrs returns the addresses of the agent's network namespace that
// identify the node: every interface address except loopback, link-local
// and multicast ones.
func hostAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("host addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range as {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr().Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() {
			continue
		}
		out = append(out, ip)
	}
	return out, nil
}

// nodeClaims returns the identity claims of the nodes: the remote nodes'
// prefixes carry remote-node, the node's own addresses host (which wins
// where both name an address). The ipcache (datapath) and the in-Envoy
// identity table (policy resources) both take them, below the workloads'
// own addresses.
//
// The kube-apiserver's addresses (datapath.kubeAPIServer) carry the
// kube-apiserver identity (toEntities: [kube-apiserver]), over remote-node
// where both name an address.
//
// nodes are the engine's node claims (State.Nodes): the nodes of the
// config's nodes list and of Kubernetes (remote-node, or their own with
// enableNodeSelectorLabels) and the kube-apiserver's addresses Kubernetes
// names (the default/kubernetes EndpointSlice).
//
// The health endpoints' addresses (datapath.healthAddresses) carry the
// health identity (fromEntities/toEntities: [health]) over every other
// node claim: a local health address is usually one of the node's own.
func nodeClaims(remote, apiserver, health []netip.Prefix, nodes map[netip.Prefix]uint32) (map[netip.Prefix]uint32, error) {
	out := make(map[netip.Prefix]uint32, len(remote)+len(apiserver)+len(health)+len(nodes)+4)
	for _, p := range remote {
		out[p] = uint32(policy.IdentityRemoteNode)
	}
	for p, id := range nodes {
		out[p] = id
	}
	for _, p := range apiserver {
		out[p] = uint32(policy.IdentityKubeAPIServer)
	}
	host, err := hostAddrs()
	for _, a := range host {
		out[netip.PrefixFrom(a, a.BitLen())] = uint32(policy.IdentityHost)
	}
	for _, p := range health {
		out[p] = uint32(policy.IdentityHealth)
	}
	return out, err
}

// healthPrefixes returns datapath.healthAddresses as prefixes (validated
// by Config.Validate; an invalid entry is skipped).
func healthPrefixes(c DatapathConfig) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range c.HealthAddresses {
		if p, err := parseAddrOrPrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// addNodeClaims adds claims to the endpoint claims without overriding a
// workload's own address.
func addNodeClaims(eps, claims map[netip.Prefix]uint32) {
	for p, id := range claims {
		if _, ok := eps[p]; !ok {
			eps[p] = id
		}
	}
}

// nodeClaims is nodeClaims for the policy resources (errors logged: the
// claims found are still used).
func (a *Agent) nodeClaims() map[netip.Prefix]uint32 {
	var nodes map[netip.Prefix]uint32
	if a.eng != nil {
		nodes = a.eng.nodeClaims()
	}
	claims, err := nodeClaims(a.remote, a.apiserver, healthPrefixes(a.cfg.Datapath), nodes)
	if err != nil {
		a.log.Warn("node claims", "error", err)
	}
	return claims
}

// allowLocalhost adds Cilium's allow-localhost entry to an enforced
// ingress policy: the host identity on any protocol and port is allowed.
// An entry of the policy for the host on that key (a deny, an L3 rule)
// stays as it is; longer entries for the host (a port with L7 rules: the
// proxy) still decide their ports, and a deny for every identity still
// wins in the datapath.
func allowLocalhost(in []redirect.PolicyEntry) []redirect.PolicyEntry {
	key := redirect.PolicyKey{Direction: redirect.Ingress, Identity: redirect.IdentityHost, Proto: redirect.ProtoAny}
	for _, e := range in {
		if e.Direction == key.Direction && e.Identity == key.Identity && e.Proto == redirect.ProtoAny {
			return in
		}
	}
	return append(in, redirect.PolicyEntry{PolicyKey: key, Verdict: redirect.Allow})
}

// prefixes parses addresses or prefixes (validated), naming the field.
func prefixes(ss []string, field string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, s := range ss {
		p, err := parseAddrOrPrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func parseAddrOrPrefix(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return p.Masked(), nil
}

// disableTCPEarlyDemux turns TCP early demux off in the agent's network
// namespace (datapath.disableTCPEarlyDemux): with it on, the client's
// packets after the handshake of a flow hairpinned to the ingress proxy
// from another node or the world are matched to the proxy's socket before
// routing and dropped by the forwarding path (bpf/redirect/README.md).
func disableTCPEarlyDemux() error {
	if err := os.WriteFile("/proc/sys/net/ipv4/tcp_early_demux", []byte("0"), 0o644); err != nil {
		return fmt.Errorf("disable tcp early demux: %w", err)
	}
	return nil
}
