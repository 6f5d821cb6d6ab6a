package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/policy"
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

// cgroupRecorder is a cgroupWriter keeping what it was given.
type cgroupRecorder struct {
	eps     map[uint32]redirect.CgroupEndpoint
	removed []uint32
}

func (c *cgroupRecorder) AddCgroupEndpoint(ep redirect.CgroupEndpoint) error {
	c.eps[ep.ID] = ep
	return nil
}

func (c *cgroupRecorder) RemoveCgroupEndpoint(id uint32) error {
	delete(c.eps, id)
	c.removed = append(c.removed, id)
	return nil
}

// TestSocketModeCgroupEndpoints: in socket mode every local endpoint's
// cgroup gets an entry under the endpoint's own ID that leaves redirects
// to tc and enforces egress as the endpoint's policy does (not in audit
// mode); an endpoint without a cgroup is an endpoint error (locked
// down), never left with egress unchecked at the socket silently; a gone
// endpoint's entry is removed.
func TestSocketModeCgroupEndpoints(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	eps := []Endpoint{
		{Name: "a", ID: 1, IPs: []string{"10.0.0.1", "fd00::1"}, Labels: map[string]string{"app": "a"}, Interface: "veth-a", Cgroup: "/sys/fs/cgroup/a"},
		{Name: "b", ID: 2, IPs: []string{"10.0.0.2"}, Labels: map[string]string{"app": "b"}, Interface: "veth-b", Cgroup: "/sys/fs/cgroup/b"},
		{Name: "c", ID: 3, IPs: []string{"10.0.0.3"}, Labels: map[string]string{"app": "c"}, Interface: "veth-c"},
	}
	e, err := newEngine(&Config{Endpoints: eps}, log)
	if err != nil {
		t.Fatal(err)
	}
	dp := newScaleDatapath()
	dp.cfg.Mode = ModeSocket
	rec := &cgroupRecorder{eps: map[uint32]redirect.CgroupEndpoint{}}
	dp.cg = rec
	e.consumers = []Consumer{dp}
	ps, err := policy.Parse("p.yaml", []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	e.repo.Upsert(ps[0])
	e.publish(ctx)
	a, b := rec.eps[1], rec.eps[2]
	if a.CgroupPath != "/sys/fs/cgroup/a" || !a.TCRedirect || !a.EnforceEgress || a.Identity == 0 {
		t.Errorf("a's cgroup entry = %+v; want its cgroup, TCRedirect, egress enforced", a)
	}
	if b.CgroupPath != "/sys/fs/cgroup/b" || !b.TCRedirect || b.EnforceEgress {
		t.Errorf("b's cgroup entry = %+v; want its cgroup, TCRedirect, egress not enforced (no egress policy)", b)
	}
	if _, ok := rec.eps[3]; ok {
		t.Errorf("c (no cgroup) has a cgroup entry")
	}
	if err := dp.endpointError(3); !errors.Is(err, errNoCgroup) {
		t.Errorf("c's endpoint error = %v; want errNoCgroup", err)
	}
	// a leaves: its cgroup entry goes with it.
	st := e.state()
	var rest []Workload
	for _, w := range st.Workloads {
		if w.ID != 1 {
			rest = append(rest, w)
		}
	}
	_ = dp.Apply(ctx, &State{Policy: st.Policy, Workloads: rest}) // c's error again
	if _, ok := rec.eps[1]; ok || !slices.Contains(rec.removed, 1) {
		t.Errorf("a gone: cgroup entries %v, removed %v; want a's removed", rec.eps, rec.removed)
	}
}

// TestIPv6OnlyEndpointRefused: with the datapath enabled, a local endpoint
// with IPv6 addresses only is refused by validation, naming the field; a
// dual-stack one and a remote IPv6-only one are accepted.
func TestIPv6OnlyEndpointRefused(t *testing.T) {
	cfg := Config{PolicyDir: "/etc/ward/policies", Datapath: DatapathConfig{Enabled: true}, Endpoints: []Endpoint{
		{Name: "dual", ID: 1, IPs: []string{"10.0.0.1", "fd00::1"}, Interface: "veth-a"},
		{Name: "v6", ID: 2, IPs: []string{"fd00::2"}, Interface: "veth-b"},
		{Name: "remote", ID: 3, IPs: []string{"fd00::3"}, Remote: true},
	}}
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "endpoints[1].ips: an endpoint needs an IPv4 address") {
		t.Fatalf("Validate() = %v; want endpoints[1].ips refused as IPv6-only", err)
	}
	if strings.Contains(err.Error(), "endpoints[0]") || strings.Contains(err.Error(), "endpoints[2]") {
		t.Errorf("Validate() = %v; want only endpoints[1] refused", err)
	}
}
