// Package policymap translates the policy engine's resolved model
// (policy.DirectionPolicy) into the datapath's policy-map entries
// (redirect.PolicyEntry): allow, deny, and redirect-to-proxy-port for the
// (remote identity, port, protocol) tuples whose traffic must go through a
// proxy. It is pure: the agent writes the result with redirect.SetPolicy.
//
// A port range becomes its power-of-two aligned blocks (redirect.PortBlocks:
// at most 30 entries for any range, 1-65535 included), never one entry per
// port. ICMP and ICMPv6 entries are keyed by the ICMP type (L4Entry.Port;
// Port 0 is every type, as in the model).
//
// Fail closed: Entries returns an error only for input the model never
// produces (a port without a protocol). The agent must then lock the
// endpoint down (redirect.Datapath.Lockdown) instead of skipping it or
// keeping its previous entries.
package policymap

import (
	"fmt"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/policy"
)

// ProxyPorts names the transparent listener for a proxied port: it returns
// the listener port for an L7Port (Envoy's for HTTP/Kafka, the DNS proxy's
// for DNS), or 0 when there is none (the traffic is then dropped: a
// redirect without a proxy fails closed).
type ProxyPorts func(dir policy.Direction, l7 *policy.L7Port) uint16

// Entries translates one direction of an endpoint's resolved policy. On an
// error the caller must lock the endpoint down (see the package doc).
func Entries(dir policy.Direction, d *policy.DirectionPolicy, ports ProxyPorts) ([]redirect.PolicyEntry, error) {
	if d == nil {
		return nil, nil
	}
	rdir := redirect.Ingress
	if dir == policy.Egress {
		rdir = redirect.Egress
	}
	var out []redirect.PolicyEntry
	add := func(e policy.L4Entry, v redirect.Verdict, proxy uint16) error {
		key := redirect.PolicyKey{Direction: rdir, Identity: uint32(e.Remote), Proto: uint8(e.Protocol)}
		if e.Protocol == policy.ProtocolAny {
			if e.Port != 0 {
				return fmt.Errorf("%s: port %d without a protocol", e.Origin, e.Port)
			}
			out = append(out, redirect.PolicyEntry{PolicyKey: key, Verdict: v, ProxyPort: proxy})
			return nil
		}
		if e.Port == 0 { // every port (every ICMP type)
			out = append(out, redirect.PolicyEntry{PolicyKey: key, Verdict: v, ProxyPort: proxy})
			return nil
		}
		hi := e.EndPort
		if hi < e.Port {
			hi = e.Port
		}
		for _, b := range redirect.PortBlocks(e.Port, hi) {
			k := key
			k.Port, k.PortWild = b.Port, b.Wild
			out = append(out, redirect.PolicyEntry{PolicyKey: k, Verdict: v, ProxyPort: proxy})
		}
		return nil
	}
	for _, e := range d.Deny {
		if err := add(e, redirect.Deny, 0); err != nil {
			return nil, err
		}
	}
	for _, e := range d.Allow {
		if !e.Redirect {
			if err := add(e, redirect.Allow, 0); err != nil {
				return nil, err
			}
			continue
		}
		l7 := proxyFor(d, e)
		var port uint16
		if l7 != nil && ports != nil {
			port = ports(dir, l7)
		}
		if port == 0 || (e.Protocol != policy.ProtocolTCP && e.Protocol != policy.ProtocolUDP) {
			// No proxy for it (proxies take TCP and UDP only): deny rather
			// than allow unchecked.
			if err := add(e, redirect.Deny, 0); err != nil {
				return nil, err
			}
			continue
		}
		if err := add(e, redirect.Redirect, port); err != nil {
			return nil, err
		}
	}
	if !d.Enforced && Enforce(d) {
		// Not default deny, yet deny or redirect entries: the datapath
		// must look the direction up, and everything else passes.
		out = append(out, redirect.PolicyEntry{PolicyKey: redirect.PolicyKey{Direction: rdir, Identity: uint32(policy.IdentityAny), Proto: uint8(policy.ProtocolAny)}, Verdict: redirect.Allow})
	}
	return out, nil
}

// Enforce reports whether the datapath must look up the direction's
// policy: it is default deny (Enforced), or it is not but has deny entries
// or entries redirected to a proxy — a policy with enableDefaultDeny false
// (the seed's DNS visibility policy, deny rules beside it); Entries then
// adds an allow-all entry below them.
func Enforce(d *policy.DirectionPolicy) bool {
	if d == nil {
		return false
	}
	if d.Enforced || len(d.Deny) > 0 {
		return true
	}
	for _, e := range d.Allow {
		if e.Redirect {
			return true
		}
	}
	return false
}

// proxyFor finds the L7Port that covers a redirect entry.
func proxyFor(d *policy.DirectionPolicy, e policy.L4Entry) *policy.L7Port {
	for _, l := range d.Proxy {
		if l.Protocol != e.Protocol && l.Protocol != policy.ProtocolAny {
			continue
		}
		end := l.EndPort
		if end < l.Port {
			end = l.Port
		}
		if e.Port >= l.Port && e.Port <= end {
			return l
		}
	}
	return nil
}
