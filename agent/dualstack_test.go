package agent

import (
	"errors"
	"net/netip"
	"strings"
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

// TestDatapathModeValidate: datapath.mode is tc or socket, and socket
// mode needs every local endpoint's cgroup.
func TestDatapathModeValidate(t *testing.T) {
	ep := Endpoint{Name: "a", ID: 1, IPs: []string{"10.0.0.1"}, Interface: "veth-a"}
	remote := Endpoint{Name: "r", ID: 2, IPs: []string{"10.0.1.1"}, Remote: true}
	withCgroup := ep
	withCgroup.Cgroup = "/sys/fs/cgroup/a"
	tests := []struct {
		name string
		mode DatapathMode
		eps  []Endpoint
		want string // "" valid, else a substring of the error
	}{
		{name: "default", eps: []Endpoint{ep}},
		{name: "tc", mode: ModeTC, eps: []Endpoint{ep}},
		{name: "socket", mode: ModeSocket, eps: []Endpoint{withCgroup, remote}},
		{name: "socket without cgroup", mode: ModeSocket, eps: []Endpoint{ep}, want: "endpoints[0].cgroup is required with datapath.mode socket"},
		{name: "unknown", mode: "xdp", eps: []Endpoint{ep}, want: `datapath.mode "xdp": want tc or socket`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Endpoints: tc.eps, Datapath: DatapathConfig{Mode: tc.mode}}
			err := cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate() = %v; want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate() = %v; want an error containing %q", err, tc.want)
			}
		})
	}
}
