package agent

import (
	"errors"
	"net/netip"
	"testing"
)

// TestEndpointAddrs: the datapath gets an endpoint's first IPv4 and first
// IPv6 address (v4-mapped addresses count as IPv4); IPv6 alone is refused.
func TestEndpointAddrs(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		name   string
		addrs  []netip.Addr
		v4, v6 netip.Addr
		err    error
	}{
		{name: "none"},
		{name: "v4", addrs: []netip.Addr{a("10.0.0.1")}, v4: a("10.0.0.1")},
		{name: "dual", addrs: []netip.Addr{a("fd00::1"), a("10.0.0.1"), a("10.0.0.2"), a("fd00::2")}, v4: a("10.0.0.1"), v6: a("fd00::1")},
		{name: "mapped", addrs: []netip.Addr{a("::ffff:10.0.0.1"), a("fd00::1")}, v4: a("10.0.0.1"), v6: a("fd00::1")},
		{name: "v6 only", addrs: []netip.Addr{a("fd00::1")}, v6: a("fd00::1"), err: errIPv6Only},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v4, v6, err := endpointAddrs(tc.addrs)
			if v4 != tc.v4 || v6 != tc.v6 || !errors.Is(err, tc.err) {
				t.Errorf("endpointAddrs(%v) = %v, %v, %v; want %v, %v, %v", tc.addrs, v4, v6, err, tc.v4, tc.v6, tc.err)
			}
		})
	}
}
