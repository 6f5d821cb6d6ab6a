package agent

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/policy"
)

func TestAllowLocalhostEntry(t *testing.T) {
	hostAny := redirect.PolicyKey{Direction: redirect.Ingress, Identity: redirect.IdentityHost, Proto: redirect.ProtoAny}
	hostHTTP := redirect.PolicyEntry{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: redirect.IdentityHost, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Redirect, ProxyPort: 15001}
	tests := []struct {
		name string
		in   []redirect.PolicyEntry
		want []redirect.PolicyEntry
	}{
		{name: "default deny gets the host", in: nil,
			want: []redirect.PolicyEntry{{PolicyKey: hostAny, Verdict: redirect.Allow}}},
		{name: "a host L7 port keeps its redirect", in: []redirect.PolicyEntry{hostHTTP},
			want: []redirect.PolicyEntry{hostHTTP, {PolicyKey: hostAny, Verdict: redirect.Allow}}},
		{name: "a deny of the host stays", in: []redirect.PolicyEntry{{PolicyKey: hostAny, Verdict: redirect.Deny}},
			want: []redirect.PolicyEntry{{PolicyKey: hostAny, Verdict: redirect.Deny}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := allowLocalhost(tc.in)
			if len(got) != len(tc.want) {
				t.Fatalf("allowLocalhost(%v) = %v; want %v", tc.in, got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("allowLocalhost(%v)[%d] = %v; want %v", tc.in, i, got[i], tc.want[i])
				}
			}
		})
	}
}

// TestNodeClaimsHealth: datapath.healthAddresses carry the health
// identity, over a remote node's prefix and over the node's own address
// (a local health endpoint's address is one of the node's).
func TestNodeClaimsHealth(t *testing.T) {
	host, err := hostAddrs()
	if err != nil {
		t.Fatal(err)
	}
	health := []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32")}
	if len(host) > 0 {
		health = append(health, netip.PrefixFrom(host[0], host[0].BitLen()))
	}
	remote := []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("192.0.2.8/32")}
	claims, err := nodeClaims(remote, nil, health, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range health {
		if id := claims[p]; id != uint32(policy.IdentityHealth) {
			t.Errorf("claims[%v] = %d; want health (%d)", p, id, policy.IdentityHealth)
		}
	}
	if id := claims[netip.MustParsePrefix("192.0.2.8/32")]; id != uint32(policy.IdentityRemoteNode) {
		t.Errorf("claims[192.0.2.8/32] = %d; want remote-node", id)
	}
	cfg := DatapathConfig{HealthAddresses: []string{"192.0.2.7", "2001:db8::/64"}}
	got := healthPrefixes(cfg)
	want := []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8::/64")}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("healthPrefixes(%v) = %v; want %v", cfg.HealthAddresses, got, want)
	}
	bad := Config{Datapath: DatapathConfig{HealthAddresses: []string{"192.0.2.7", "not-an-address"}}}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "datapath.healthAddresses[1]") {
		t.Errorf("Validate with healthAddresses %v = %v; want an error naming datapath.healthAddresses[1]", bad.Datapath.HealthAddresses, err)
	}
}

func TestNodeClaims(t *testing.T) {
	remote := []netip.Prefix{netip.MustParsePrefix("172.31.0.1/32"), netip.MustParsePrefix("192.0.2.0/24")}
	claims, err := nodeClaims(remote, []netip.Prefix{netip.MustParsePrefix("10.96.0.1/32")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range remote {
		if claims[p] != uint32(policy.IdentityRemoteNode) {
			t.Errorf("claims[%v] = %d; want remote-node", p, claims[p])
		}
	}
	if id := claims[netip.MustParsePrefix("10.96.0.1/32")]; id != uint32(policy.IdentityKubeAPIServer) {
		t.Errorf("kube-apiserver claim = %d; want %d", id, policy.IdentityKubeAPIServer)
	}
	host, err := hostAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range host {
		if a.IsLoopback() || a.IsLinkLocalUnicast() {
			t.Errorf("host address %v: loopback and link-local are not the node's", a)
		}
		if id := claims[netip.PrefixFrom(a, a.BitLen())]; id != uint32(policy.IdentityHost) {
			t.Errorf("claims[%v] = %d; want host", a, id)
		}
	}
	// A workload's own address is never overridden.
	pod := netip.MustParsePrefix("172.31.0.1/32")
	eps := map[netip.Prefix]uint32{pod: 12345}
	addNodeClaims(eps, claims)
	if eps[pod] != 12345 {
		t.Errorf("endpoint claim of %v = %d; want 12345 (the workload's)", pod, eps[pod])
	}
}

func TestConfigRemoteNodes(t *testing.T) {
	c := Config{Datapath: DatapathConfig{RemoteNodes: []string{"10.0.0.1", "fd00::/64", "nonsense"}}}
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "datapath.remoteNodes[2]") || strings.Contains(err.Error(), "remoteNodes[0]") {
		t.Fatalf("Validate() = %v; want an error naming datapath.remoteNodes[2] only", err)
	}
	if !(DatapathConfig{}).allowLocalhost() {
		t.Error("allowLocalhost default = false; want true (Cilium's allow-localhost)")
	}
}
