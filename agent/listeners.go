package agent

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/proxylib/policyfilter"
	"github.com/wardproxy/ward/xds"
)

// filterConfig is the filter_config of ward's policy filters on this node.
func (a *Agent) filterConfig(c policyfilter.Config) []byte {
	c.XDSSocket, c.Node = a.xdsSocket(), a.node
	c.FlowSocket = a.flowSocket()
	// Envoy's first listener with a ward filter starts accepting once the
	// in-Envoy policy client has this agent's state (or 5 s passed), so
	// no request right after a start is denied for want of a policy.
	c.WaitFirstPolicyMS = 5000
	b, err := json.Marshal(c)
	if err != nil {
		panic(err) // a struct of strings and numbers always marshals
	}
	return b
}

// staticResources builds the configured static listeners and clusters.
func (a *Agent) staticResources() (xds.EnvoyResources, error) {
	var r xds.EnvoyResources
	for _, l := range a.cfg.Listeners {
		cluster := l.Name + "-upstream"
		if l.Transparent {
			c := xds.OriginalDstCluster(cluster, l.HTTP2)
			if l.Kind == "http" && !l.HTTP2 {
				// The upstream is the server the client addressed.
				c = xds.FollowDownstream(c)
			}
			r.Clusters = append(r.Clusters, c)
		} else {
			ap := netip.MustParseAddrPort(l.Upstream) // Validate checked it
			r.Clusters = append(r.Clusters, xds.StaticCluster(cluster, ap.Addr().String(), uint32(ap.Port()), l.HTTP2))
		}
		filters := l.Filters
		if filters == nil && l.Kind == "http" {
			filters = []string{"ward.http"}
		}
		fcfg := a.filterConfig(policyfilter.Config{Endpoint: l.Endpoint, Direction: l.Direction, Port: l.PolicyPort, AccessLog: l.AccessLog})
		var mf []xds.ModuleFilter
		for _, f := range filters {
			mf = append(mf, xds.ModuleFilter{Name: f, Config: fcfg})
		}
		var lis types.Resource
		var err error
		if l.Kind == "http" {
			lis, err = xds.HTTPListener{Name: l.Name, Address: l.Address, Port: l.Port, Transparent: l.Transparent, Cluster: cluster, Filters: mf}.Build()
		} else {
			lis, err = xds.TCPListener{Name: l.Name, Address: l.Address, Port: l.Port, Transparent: l.Transparent, Cluster: cluster, Filters: mf}.Build()
		}
		if err != nil {
			return r, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		r.Listeners = append(r.Listeners, lis)
	}
	return r, nil
}

// datapathResources returns Envoy's transparent listeners and clusters for
// the proxied ports: ingress HTTP and Kafka, shared by every local
// endpoint, and one egress HTTP and one egress Kafka listener per local
// endpoint whose upstream sockets carry the endpoint's identity
// (redirect.ProxyEgressMark) and leave from the endpoint's own address
// (xds.OriginalSource), so the destination's ingress policy sees the real
// source, in this node's datapath and on any other node. Every HTTP cluster speaks upstream the
// protocol the client spoke (xds.FollowDownstream): the upstream is the
// server the client addressed, so gRPC and h2c stay h2.
func (a *Agent) datapathResources(identity func(uint64) (uint32, bool)) (xds.EnvoyResources, error) {
	var r xds.EnvoyResources
	dc := a.cfg.Datapath
	httpIn, err := xds.HTTPListener{Name: "ward-http-ingress", Address: "0.0.0.0", Port: uint32(dc.HTTPIngressPort), Transparent: true,
		Cluster: "ward-original-dst-ingress", Filters: []xds.ModuleFilter{{Name: "ward.http", Config: a.filterConfig(policyfilter.Config{Direction: "ingress", AccessLog: dc.AccessLog})}}}.Build()
	if err != nil {
		return r, err
	}
	kafkaIn, err := xds.TCPListener{Name: "ward-kafka-ingress", Address: "0.0.0.0", Port: uint32(dc.KafkaIngressPort), Transparent: true,
		Cluster: "ward-original-dst-ingress-tcp", Filters: []xds.ModuleFilter{{Name: "ward.kafka", Config: a.filterConfig(policyfilter.Config{Direction: "ingress", AccessLog: dc.AccessLog})}}}.Build()
	if err != nil {
		return r, err
	}
	r.Listeners = append(r.Listeners, httpIn, kafkaIn)
	r.Clusters = append(r.Clusters,
		xds.MarkUpstream(xds.FollowDownstream(xds.OriginalDstCluster("ward-original-dst-ingress", false)), redirect.MarkProxyIngress),
		xds.MarkUpstream(xds.OriginalDstCluster("ward-original-dst-ingress-tcp", false), redirect.MarkProxyIngress))
	for _, w := range a.eng.workloads() {
		ep := w.Endpoint
		if !ep.Remote {
			a.dp.assign(ep.ID)
		}
		port, ok := a.dp.egressPort(ep.ID)
		if !ok {
			continue
		}
		id, ok := identity(ep.ID)
		if !ok {
			continue
		}
		cluster := fmt.Sprintf("ward-original-dst-egress-%d", ep.ID)
		l, err := xds.HTTPListener{Name: fmt.Sprintf("ward-http-egress-%d", ep.ID), Address: "0.0.0.0", Port: uint32(port), Transparent: true,
			Cluster: cluster, Filters: []xds.ModuleFilter{{Name: "ward.http", Config: a.filterConfig(policyfilter.Config{Direction: "egress", Endpoint: ep.Name, AccessLog: dc.AccessLog})}}}.Build()
		if err != nil {
			return r, err
		}
		xds.OriginalSource(l)
		r.Listeners = append(r.Listeners, l)
		// ward.http on the egress listener also applies a local
		// destination's ingress HTTP rules (policyfilter: chained
		// ingress), so its upstream says so.
		r.Clusters = append(r.Clusters, xds.MarkUpstream(xds.FollowDownstream(xds.OriginalDstCluster(cluster, false)), redirect.ProxyEgressMark(id)|redirect.MarkIngressChecked))

		kport, ok := a.dp.egressKafkaPort(ep.ID)
		if !ok {
			continue
		}
		kcluster := fmt.Sprintf("ward-original-dst-egress-tcp-%d", ep.ID)
		kl, err := xds.TCPListener{Name: fmt.Sprintf("ward-kafka-egress-%d", ep.ID), Address: "0.0.0.0", Port: uint32(kport), Transparent: true,
			Cluster: kcluster, Filters: []xds.ModuleFilter{{Name: "ward.kafka", Config: a.filterConfig(policyfilter.Config{Direction: "egress", Endpoint: ep.Name, AccessLog: dc.AccessLog})}}}.Build()
		if err != nil {
			return r, err
		}
		xds.OriginalSource(kl)
		r.Listeners = append(r.Listeners, kl)
		// ward.kafka (and the generic parsers on this listener) chain a
		// local destination's ingress rules too (policyfilter connRules).
		r.Clusters = append(r.Clusters, xds.MarkUpstream(xds.OriginalDstCluster(kcluster, false), redirect.ProxyEgressMark(id)|redirect.MarkIngressChecked))
	}
	return r, nil
}
