// Package policymap translates the policy engine's resolved model
// (policy.DirectionPolicy) into the datapath's policy-map entries
// (redirect.PolicyEntry): allow, deny, and redirect-to-proxy-port for the
// (remote identity, port, protocol) tuples whose traffic must go through a
// proxy. It is pure: wardd writes the result with redirect.SetPolicy.
package policymap

import (
	"fmt"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/policy"
)

// MaxRangeExpansion bounds how many single-port entries one port range may
// become (the datapath keys single ports).
const MaxRangeExpansion = 4096

// ProxyPorts names the transparent listener for a proxied port: it returns
// the listener port for an L7Port (Envoy's for HTTP/Kafka, the DNS proxy's
// for DNS), or 0 when there is none (the traffic is then dropped: a
// redirect without a proxy fails closed).
type ProxyPorts func(dir policy.Direction, l7 *policy.L7Port) uint16

// Entries translates one direction of an endpoint's resolved policy.
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
		if e.Protocol == policy.ProtocolICMP || e.Protocol == policy.ProtocolICMPv6 {
			return nil // ICMP types are not keyed by the datapath yet: no entry, so default deny
		}
		lo, hi := e.Port, e.EndPort
		if hi < lo {
			hi = lo
		}
		if int(hi)-int(lo)+1 > MaxRangeExpansion {
			return fmt.Errorf("port range %d-%d of %s is wider than %d ports", lo, hi, e.Origin, MaxRangeExpansion)
		}
		for p := int(lo); p <= int(hi); p++ {
			out = append(out, redirect.PolicyEntry{
				PolicyKey: redirect.PolicyKey{Direction: rdir, Identity: uint32(e.Remote), Port: uint16(p), Proto: uint8(e.Protocol)},
				Verdict:   v, ProxyPort: proxy,
			})
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
	return out, nil
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
