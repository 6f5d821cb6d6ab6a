package kube

import (
	"maps"
	"net/netip"
	"sort"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// deriveNodes derives the other nodes (their InternalIP and ExternalIP
// addresses and labels: remote-node, or with node selector labels their
// own identity for fromNodes/toNodes) and the kube-apiserver's addresses:
// the endpoints of the default/kubernetes service's EndpointSlices, the
// kube-apiserver entity. This node's own Node object is not another node
// (its addresses are the host's): it is returned apart, for its labels.
func (s *Sources) deriveNodes() ([]Node, *Node, []netip.Prefix) {
	nodes, err := s.nodes.List(labels.Everything())
	if err != nil {
		s.log.Warn("kubernetes nodes", "error", err)
	}
	out := make([]Node, 0, len(nodes))
	var self *Node
	for _, n := range nodes {
		if n.Name == s.cfg.NodeName {
			self = &Node{Name: n.Name, Labels: maps.Clone(n.Labels)}
			continue
		}
		if nd, ok := nodeOf(n); ok {
			out = append(out, nd)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	var api []netip.Prefix
	if eps, err := s.slices.EndpointSlices("default").List(labels.Everything()); err == nil {
		for _, a := range sliceAddresses(eps)["default/kubernetes"] {
			if ip, err := netip.ParseAddr(a); err == nil {
				ip = ip.Unmap()
				api = append(api, netip.PrefixFrom(ip, ip.BitLen()))
			}
		}
	}
	s.mu.Lock()
	s.status.Nodes = len(out)
	s.mu.Unlock()
	return out, self, api
}

// nodeOf converts a Node; false without an address.
func nodeOf(n *corev1.Node) (Node, bool) {
	out := Node{Name: n.Name, Labels: maps.Clone(n.Labels)}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if _, err := netip.ParseAddr(a.Address); err == nil {
			out.Addresses = append(out.Addresses, a.Address)
		}
	}
	return out, len(out.Addresses) > 0
}
