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

// underlayNet is the underlay's subnet (inside the test's own namespaces).
var underlayNet = netip.MustParsePrefix("172.31.0.0/24")

// cluster is two or more nodes on an underlay, and the world.
type cluster struct {
	nodes    []*node.Node
	addrs    []netip.Addr // each node's native address
	underlay *netns.Namespace
	world    *netns.Namespace
	worldIP  netip.Addr
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
	c := &cluster{}
	for _, specs := range pods {
		c.nodes = append(c.nodes, node.NewWith(t, node.Options{Namespace: true, Routes: []netip.Prefix{underlayNet}}, specs...))
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
	}
	c.worldIP = netip.MustParseAddr("172.31.0.100")
	if _, err := netns.Connect(c.world, c.underlay, "world", netip.PrefixFrom(c.worldIP, 24)); err != nil {
		t.Fatal(err)
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
			// The other node's pods, as remote endpoints (ids above the
			// local ones Start numbers from 1).
			for k, s := range m.Specs {
				if s.Unmanaged {
					continue
				}
				n.Config.Endpoints = append(n.Config.Endpoints, agent.Endpoint{Name: s.Name, ID: uint64(1000*(j+1) + k + 1),
					IPs: []string{m.Pods[s.Name].IP.String()}, Labels: s.Labels, Namespace: s.Namespace, Remote: true})
			}
		}
		if err := c.world.IP("route", "add", n.Topo.Subnet.String(), "via", c.addrs[i].String()); err != nil {
			t.Fatal(err)
		}
	}
	return c
}
