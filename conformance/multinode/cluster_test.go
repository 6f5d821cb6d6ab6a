// Package multinode runs ward on a cluster of nodes: each node is a network
// namespace with its own native device (a veth to a shared underlay
// bridge), its own pods, its own agent (package agent, as wardd runs it,
// in the node's namespace) with its bpffs pins and Envoy; the nodes route
// each other's pod /24 through the underlay, and a "world" namespace on
// the underlay stands outside the cluster. Each agent knows the other
// node's pods as remote endpoints. Nothing touches the machine's own
// devices or the root namespace's routing.
package multinode

import (
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/conformance/node"
)

func TestMain(m *testing.M) {
	node.AgentMain()
	os.Exit(m.Run())
}

// underlayNet is the underlay's subnet (inside the test's own namespaces),
// underlayNet6 its IPv6 subnet in a dual-stack cluster.
var (
	underlayNet  = netip.MustParsePrefix("172.31.0.0/24")
	underlayNet6 = netip.MustParsePrefix("fd00:31::/64")
)

// cluster is two or more nodes on an underlay, and the world.
type cluster struct {
	nodes    []*node.Node
	addrs    []netip.Addr // each node's native address
	addrs6   []netip.Addr // and its IPv6 one (newDualStackCluster)
	underlay *netns.Namespace
	world    *netns.Namespace
	worldIP  netip.Addr
	worldIP6 netip.Addr
}

// newCluster builds the nodes (one per pod list) and wires them: native
// devices on the underlay, routes to each other's pods, each agent told
// the other nodes' pods as remote endpoints (after the local ones are
// known, before Start), and the other nodes' addresses as remote nodes
// (datapath.remoteNodes). Each agent's datapath attaches to its node's
// native device (datapath.devices: eth0), where the later packets of L7
// ingress flows from off the node go to the proxy (bpf/redirect/README.md).
func newCluster(t *testing.T, pods ...[]node.PodSpec) *cluster {
	t.Helper()
	return newClusterWith(t, false, pods...)
}

// newDualStackCluster is newCluster with dual-stack pods, an IPv6
// underlay (fd00:31::/64) beside the IPv4 one, IPv6 routes between the
// nodes' pod prefixes, and the remote endpoints and nodes with both
// addresses.
func newDualStackCluster(t *testing.T, pods ...[]node.PodSpec) *cluster {
	t.Helper()
	return newClusterWith(t, true, pods...)
}

func newClusterWith(t *testing.T, ipv6 bool, pods ...[]node.PodSpec) *cluster {
	t.Helper()
	c := &cluster{}
	routes := []netip.Prefix{underlayNet}
	if ipv6 {
		routes = append(routes, underlayNet6)
	}
	for _, specs := range pods {
		c.nodes = append(c.nodes, node.NewWith(t, node.Options{Namespace: true, Routes: routes, IPv6: ipv6}, specs...))
	}
	first := c.nodes[0].Topo
	c.underlay = first.NewNamespace(t, "under")
	c.world = first.NewNamespace(t, "world")
	for i, n := range c.nodes {
		addr := netip.AddrFrom4([4]byte{172, 31, 0, byte(i + 1)})
		if _, err := netns.Connect(n.Topo.Host(), c.underlay, fmt.Sprintf("n%d", i), netip.PrefixFrom(addr, 24)); err != nil {
			t.Fatal(err)
		}
		n.Config.Datapath.Devices = []string{"eth0"}
		c.addrs = append(c.addrs, addr)
		if ipv6 {
			a6 := netip.AddrFrom16([16]byte{0xfd, 0x00, 0x00, 0x31, 15: byte(i + 1)})
			if err := netns.AddIPv6(n.Topo.Host(), "eth0", netip.PrefixFrom(a6, 64)); err != nil {
				t.Fatal(err)
			}
			c.addrs6 = append(c.addrs6, a6)
		}
	}
	c.worldIP = netip.MustParseAddr("172.31.0.100")
	if _, err := netns.Connect(c.world, c.underlay, "world", netip.PrefixFrom(c.worldIP, 24)); err != nil {
		t.Fatal(err)
	}
	if ipv6 {
		c.worldIP6 = netip.MustParseAddr("fd00:31::100")
		if err := netns.AddIPv6(c.world, "eth0", netip.PrefixFrom(c.worldIP6, 64)); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range c.nodes {
		for j, m := range c.nodes {
			if i == j {
				continue
			}
			if err := n.Topo.Host().IP("route", "add", m.Topo.Subnet.String(), "via", c.addrs[j].String()); err != nil {
				t.Fatal(err)
			}
			n.Config.Datapath.RemoteNodes = append(n.Config.Datapath.RemoteNodes, c.addrs[j].String())
			if ipv6 {
				if err := n.Topo.Host().IP("-6", "route", "add", podPrefix6(m).String(), "via", c.addrs6[j].String()); err != nil {
					t.Fatal(err)
				}
				n.Config.Datapath.RemoteNodes = append(n.Config.Datapath.RemoteNodes, c.addrs6[j].String())
			}
			// The other node's pods, as remote endpoints (ids above the
			// local ones Start numbers from 1).
			for k, s := range m.Specs {
				if s.Unmanaged {
					continue
				}
				ips := []string{m.Pods[s.Name].IP.String()}
				if p6 := m.Pods[s.Name].IPv6; p6.IsValid() {
					ips = append(ips, p6.String())
				}
				n.Config.Endpoints = append(n.Config.Endpoints, agent.Endpoint{Name: s.Name, ID: uint64(1000*(j+1) + k + 1),
					IPs: ips, Labels: s.Labels, Namespace: s.Namespace, Remote: true})
			}
		}
		if err := c.world.IP("route", "add", n.Topo.Subnet.String(), "via", c.addrs[i].String()); err != nil {
			t.Fatal(err)
		}
		if ipv6 {
			if err := c.world.IP("-6", "route", "add", podPrefix6(n).String(), "via", c.addrs6[i].String()); err != nil {
				t.Fatal(err)
			}
		}
	}
	return c
}

// podPrefix6 is a node's pods' IPv6 prefix (fd00:200:S::/48).
func podPrefix6(n *node.Node) netip.Prefix {
	p, _ := n.Topo.HostIPv6.Prefix(48)
	return p
}
