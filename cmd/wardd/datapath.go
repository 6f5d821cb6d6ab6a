package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/wardproxy/ward/bpf/policymap"
	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/xds"
)

// datapathConfig turns on the eBPF datapath: wardd loads the programs,
// attaches them to each local endpoint's host-side interface, writes the
// resolved policy into the BPF maps and gives Envoy transparent listeners
// for the proxied ports.
type datapathConfig struct {
	Enabled bool   `json:"enabled"`
	PinDir  string `json:"pinDir"` // default /sys/fs/bpf/ward
	// RoutingTable and RoutingPriority place the rule that delivers
	// redirected packets to the proxies' sockets (defaults 2004, 9000).
	RoutingTable    int `json:"routingTable"`
	RoutingPriority int `json:"routingPriority"`
	// HTTPIngressPort and KafkaIngressPort are Envoy's transparent
	// listeners for ingress HTTP and Kafka (defaults 15001, 15003).
	HTTPIngressPort  uint16 `json:"httpIngressPort"`
	KafkaIngressPort uint16 `json:"kafkaIngressPort"`
	// DNSPort is the transparent DNS proxy (UDP and TCP, default 15053);
	// egress DNS rules redirect there.
	DNSPort uint16 `json:"dnsPort"`
	// EgressHTTPBasePort is the first of the per-endpoint egress HTTP
	// listeners (default 15100): the i-th local endpoint's egress HTTP goes
	// to EgressHTTPBasePort+i, whose upstream sockets carry that endpoint's
	// identity mark so the destination's ingress policy sees the source.
	EgressHTTPBasePort uint16 `json:"egressHTTPBasePort"`
	AccessLog          string `json:"accessLog"`
}

func (c *datapathConfig) defaults() {
	if c.PinDir == "" {
		c.PinDir = redirect.DefaultPinDir
	}
	if c.HTTPIngressPort == 0 {
		c.HTTPIngressPort = 15001
	}
	if c.KafkaIngressPort == 0 {
		c.KafkaIngressPort = 15003
	}
	if c.DNSPort == 0 {
		c.DNSPort = 15053
	}
	if c.EgressHTTPBasePort == 0 {
		c.EgressHTTPBasePort = 15100
	}
}

// datapath is the loaded datapath as wardd drives it.
type datapath struct {
	cfg    datapathConfig
	dp     *redirect.Datapath
	undo   func() error
	log    *slog.Logger
	ifaces map[uint64]int    // endpoint id -> ifindex
	egress map[uint64]uint16 // endpoint id -> its egress HTTP listener port
}

func openDatapath(cfg datapathConfig, eps []endpointConfig, log *slog.Logger) (*datapath, error) {
	cfg.defaults()
	d := &datapath{cfg: cfg, log: log, ifaces: map[uint64]int{}, egress: map[uint64]uint16{}}
	n := 0
	for i, ep := range eps {
		if ep.Remote {
			continue
		}
		d.egress[ep.ID] = cfg.EgressHTTPBasePort + uint16(n)
		n++
		if ep.Interface == "" {
			return nil, fmt.Errorf("endpoints[%d].interface is required with the datapath enabled", i)
		}
		ifc, err := net.InterfaceByName(ep.Interface)
		if err != nil {
			return nil, fmt.Errorf("endpoints[%d].interface %q: %w", i, ep.Interface, err)
		}
		d.ifaces[ep.ID] = ifc.Index
	}
	dp, err := redirect.Load(redirect.Config{PinDir: cfg.PinDir, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("datapath: %w (wardd does not claim enforcement without it)", err)
	}
	undo, err := redirect.InstallProxyRouting(redirect.Routing{Table: cfg.RoutingTable, Priority: cfg.RoutingPriority})
	if err != nil {
		dp.Close()
		return nil, err
	}
	d.dp, d.undo = dp, undo
	return d, nil
}

// Close detaches nothing (pinned programs keep enforcing across a wardd
// restart); it removes the proxy routing rule and closes the handles.
func (d *datapath) Close() error {
	return errors.Join(d.undo(), d.dp.Close())
}

// egressListeners returns one transparent egress HTTP listener per local
// endpoint; its upstream sockets carry the endpoint's identity
// (redirect.ProxyEgressMark), so the destination's ingress policy in the
// datapath sees the real source.
func (d *datapath) egressListeners(socket, node string, eps []endpointConfig, identity func(uint64) (uint32, bool)) ([]types.Resource, []types.Resource, error) {
	var ls, cs []types.Resource
	for _, ep := range eps {
		port, ok := d.egress[ep.ID]
		if !ok {
			continue
		}
		id, ok := identity(ep.ID)
		if !ok {
			continue
		}
		cfg, _ := json.Marshal(map[string]any{"xds_socket": socket, "node": node, "direction": "egress", "endpoint": ep.Name, "access_log": d.cfg.AccessLog})
		cluster := fmt.Sprintf("ward-original-dst-egress-%d", ep.ID)
		l, err := xds.HTTPListener{Name: fmt.Sprintf("ward-http-egress-%d", ep.ID), Address: "0.0.0.0", Port: uint32(port), Transparent: true,
			Cluster: cluster, Filters: []xds.ModuleFilter{{Name: "ward.http", Config: cfg}}}.Build()
		if err != nil {
			return nil, nil, err
		}
		ls = append(ls, l)
		cs = append(cs, xds.MarkUpstream(xds.OriginalDstCluster(cluster, false), redirect.ProxyEgressMark(id)))
	}
	return ls, cs, nil
}

// listeners returns Envoy's transparent listeners and clusters for the
// proxied ports.
func (d *datapath) listeners(socket, node string) ([]types.Resource, []types.Resource, error) {
	mk := func(direction string) []byte {
		b, _ := json.Marshal(map[string]any{"xds_socket": socket, "node": node, "direction": direction, "access_log": d.cfg.AccessLog})
		return b
	}
	httpIn, err := xds.HTTPListener{Name: "ward-http-ingress", Address: "0.0.0.0", Port: uint32(d.cfg.HTTPIngressPort), Transparent: true,
		Cluster: "ward-original-dst-ingress", Filters: []xds.ModuleFilter{{Name: "ward.http", Config: mk("ingress")}}}.Build()
	if err != nil {
		return nil, nil, err
	}
	kafkaIn, err := xds.TCPListener{Name: "ward-kafka-ingress", Address: "0.0.0.0", Port: uint32(d.cfg.KafkaIngressPort), Transparent: true,
		Cluster: "ward-original-dst-ingress-tcp", Filters: []xds.ModuleFilter{{Name: "ward.kafka", Config: mk("ingress")}}}.Build()
	if err != nil {
		return nil, nil, err
	}
	clusters := []types.Resource{
		xds.MarkUpstream(xds.OriginalDstCluster("ward-original-dst-ingress", false), redirect.MarkProxyIngress),
		xds.MarkUpstream(xds.OriginalDstCluster("ward-original-dst-ingress-tcp", false), redirect.MarkProxyIngress),
	}
	return []types.Resource{httpIn, kafkaIn}, clusters, nil
}

// proxyPort names the listener for a proxied port of endpoint ep; 0 (no
// proxy: the flow is dropped, never let through unchecked) for egress
// Kafka, not wired yet.
func (d *datapath) proxyPort(ep uint64, dir policy.Direction, l7 *policy.L7Port) uint16 {
	if l7.Parser == "dns" {
		return d.cfg.DNSPort
	}
	if dir != policy.Ingress {
		if l7.Parser == "http" {
			return d.egress[ep]
		}
		return 0
	}
	switch l7.Parser {
	case "http":
		return d.cfg.HTTPIngressPort
	case "kafka":
		return d.cfg.KafkaIngressPort
	}
	return 0
}

// apply writes a snapshot into the maps: identities of every workload
// address and CIDR into the ipcache, then each local endpoint's policy,
// then the endpoint itself (programs attached on first sight).
func (d *datapath) apply(snap *policy.Snapshot, eps []endpointConfig, ips map[uint64][]netip.Addr) error {
	var errs []error
	ipc := d.dp.IPCache()
	for _, ep := range eps {
		pol, ok := snap.Endpoint(ep.ID)
		if !ok {
			continue
		}
		for _, a := range ips[ep.ID] {
			if err := ipc.Upsert(netip.PrefixFrom(a, a.BitLen()), uint32(pol.Identity)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, c := range snap.CIDRIdentities() {
		if c.Prefix.IsValid() {
			if err := ipc.Upsert(c.Prefix, uint32(c.ID)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, ep := range eps {
		if ep.Remote {
			continue
		}
		pol, ok := snap.Endpoint(ep.ID)
		if !ok {
			continue
		}
		ports := func(dir policy.Direction, l7 *policy.L7Port) uint16 { return d.proxyPort(ep.ID, dir, l7) }
		in, err := policymap.Entries(policy.Ingress, pol.Ingress, ports)
		if err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s: %w", ep.Name, err))
			continue
		}
		out, err := policymap.Entries(policy.Egress, pol.Egress, ports)
		if err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s: %w", ep.Name, err))
			continue
		}
		if err := d.dp.SetPolicy(uint32(ep.ID), append(in, out...)); err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s: %w", ep.Name, err))
		}
		if len(ips[ep.ID]) == 0 {
			continue
		}
		err = d.dp.AddEndpoint(redirect.Endpoint{ID: uint32(ep.ID), IP: ips[ep.ID][0], IfIndex: d.ifaces[ep.ID], Identity: uint32(pol.Identity),
			EnforceIngress: pol.Ingress != nil && pol.Ingress.Enforced, EnforceEgress: pol.Egress != nil && pol.Egress.Enforced})
		if err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s: %w", ep.Name, err))
		}
	}
	return errors.Join(errs...)
}
