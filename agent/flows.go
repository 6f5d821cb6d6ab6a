package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"golang.org/x/sync/errgroup"

	"github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/metrics"
	"github.com/wardproxy/ward/monitor"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/xds/npds"
)

// MonitorConfig is the node config's monitor block: the flow stream and
// its Hubble-compatible Observer API.
type MonitorConfig struct {
	// Disabled turns the flow stream off: no flow socket, no Observer
	// socket, records are not shipped.
	Disabled bool `json:"disabled,omitempty"`
	// Capacity is the number of recent flows kept; default 4095
	// (Cilium's hubble-event-buffer-capacity).
	Capacity int `json:"capacity,omitempty"`
}

// MetricsConfig is the node config's metrics block.
type MetricsConfig struct {
	// Address is the loopback host:port of the Prometheus exposition
	// (/metrics), e.g. 127.0.0.1:9962 (Cilium's agent port); empty: off.
	Address string `json:"address,omitempty"`
}

// observe is the agent's flow stream and metrics.
type observe struct {
	hub *monitor.Hub     // nil with the monitor disabled
	srv *monitor.Server  // nil with the monitor disabled
	met *metrics.Metrics // nil without a metrics address
	web *metrics.Server  // nil without a metrics address
	dns *dns.Proxy       // the DNS proxy (set before the metrics are served)
}

// HubbleSocket is the path of the Observer API's unix socket
// (`hubble observe --server unix://<path>`).
func (a *Agent) HubbleSocket() string { return filepath.Join(a.cfg.StateDir, "hubble.sock") }

// FlowSocket is the path of the socket Envoy's filters ship flow records
// to.
func (a *Agent) FlowSocket() string { return filepath.Join(a.cfg.StateDir, "flows.sock") }

// Flows is the agent's flow ring (nil with the monitor disabled or
// before Run).
func (a *Agent) Flows() *monitor.Hub { return a.obs.hub }

// MetricsAddr is the address the metrics are served on ("" when off or
// before Run).
func (a *Agent) MetricsAddr() string {
	if a.obs.web == nil {
		return ""
	}
	return a.obs.web.Addr().String()
}

// flowSocket is the flow_socket of the filters' configuration ("" with the
// monitor disabled).
func (a *Agent) flowSocket() string {
	if a.cfg.Monitor.Disabled {
		return ""
	}
	return a.FlowSocket()
}

// validateObserve checks the monitor and metrics blocks.
func (c *Config) validateObserve() error {
	var errs []error
	if c.Monitor.Capacity < 0 {
		errs = append(errs, fmt.Errorf("monitor.capacity %d: want 0 (default %d) or more", c.Monitor.Capacity, monitor.DefaultCapacity))
	}
	if c.Metrics.Address != "" {
		if err := metrics.CheckAddress(c.Metrics.Address); err != nil {
			errs = append(errs, fmt.Errorf("metrics.address: %w", err))
		}
	}
	return errors.Join(errs...)
}

// newObserve builds the flow ring and the metrics registry (New: nothing
// is acquired).
func (a *Agent) newObserve() {
	if !a.cfg.Monitor.Disabled {
		a.obs.hub = monitor.NewHub(a.node, a.cfg.Monitor.Capacity, describer{a}, a.log)
	}
	if a.cfg.Metrics.Address != "" {
		a.obs.met = metrics.New(a.gauges)
		if a.obs.hub != nil {
			a.obs.hub.OnRecord(a.obs.met.Observe)
		}
	}
}

// flowSink is the Sink of the agent's own producers (the DNS proxy); nil
// with the monitor disabled.
func (a *Agent) flowSink() flow.Sink {
	if a.obs.hub == nil {
		return nil
	}
	return a.obs.hub
}

// listenObserve opens the flow socket, the Observer socket and the metrics
// listener; px is the DNS proxy (nil without one) whose counters the
// metrics read.
func (a *Agent) listenObserve(px *dns.Proxy) error {
	a.obs.dns = px
	if a.obs.hub != nil {
		a.obs.srv = &monitor.Server{Hub: a.obs.hub, HubbleSocket: a.HubbleSocket(), FlowSocket: a.FlowSocket()}
		if err := a.obs.srv.Listen(); err != nil {
			a.obs.srv = nil
			return err
		}
	}
	if a.obs.met != nil {
		web, err := metrics.Listen(a.obs.met, a.cfg.Metrics.Address, a.log)
		if err != nil {
			if a.obs.srv != nil {
				a.obs.srv.Close()
			}
			return err
		}
		a.obs.web = web
	}
	return nil
}

// runObserve serves the flow stream and the metrics in g.
func (a *Agent) runObserve(ctx context.Context, g *errgroup.Group) {
	if a.obs.srv != nil {
		g.Go(func() error { return a.obs.srv.Run(ctx) })
	}
	if a.obs.web != nil {
		g.Go(func() error { return a.obs.web.Run(ctx) })
	}
}

// describer tells the flow stream who owns an address: a workload of the
// node (name, namespace, labels, identity), else the identity's labels.
type describer struct{ a *Agent }

func (d describer) Describe(ip netip.Addr, identity uint32) monitor.EndpointInfo {
	var info monitor.EndpointInfo
	e := d.a.eng
	if e == nil {
		return info
	}
	snap := e.state().Policy
	if w, ok := e.workload(ip); ok {
		info.ID, info.PodName, info.Namespace = w.ID, w.Name, w.Namespace
		if info.Namespace == "" {
			info.Namespace = "default"
		}
		if w.Remote {
			info.ID = 0
		}
		if p, ok := snap.Endpoint(w.ID); ok {
			info.Identity = uint32(p.Identity)
		}
	}
	if info.Identity == 0 {
		info.Identity = identity
	}
	if info.Identity == 0 {
		info.Identity = uint32(snap.IdentityForIP(ip))
	}
	if id, ok := snap.Identity(policy.NumericIdentity(info.Identity)); ok {
		info.Labels = id.Labels.Strings()
	}
	return info
}

// gauges is the agent state a metrics scrape reads.
func (a *Agent) gauges() metrics.Gauges {
	g := metrics.Gauges{Identities: map[string]int{}}
	if a.eng != nil {
		for _, id := range a.eng.state().Policy.Identities() {
			switch {
			case id.ID.IsReserved():
				g.Identities["reserved"]++
			case id.Prefix.IsValid():
				g.Identities["cidr"]++
			case len(id.Labels) > 0 && id.Labels[0].Source == policy.SourceFQDN:
				g.Identities["fqdn"]++
			default:
				g.Identities["endpoint"]++
			}
		}
	}
	if a.src != nil {
		for _, f := range a.src.Status() {
			if f.Err != nil {
				g.PolicyImportErrors++
			}
		}
	}
	for _, typ := range watchedTypes {
		x := metrics.XDSType{Type: xdsShortName(typ)}
		for _, r := range a.srv.Resources(typ) {
			switch {
			case r.Acked:
				x.Acked++
			case r.Error != "":
				x.Rejected++
			default:
				x.Pending++
			}
		}
		if n, ok := a.srv.LastNACK(typ); ok && n.Version != a.srv.Acked(typ) {
			x.NACKed = true
		}
		g.XDS = append(g.XDS, x)
	}
	if a.proc != nil {
		g.EnvoyStarts = a.proc.Starts()
	}
	if px := a.obs.dns; px != nil {
		st := px.Stats()
		g.DNSQueries, g.DNSAllowed, g.DNSDenied = st.Queries.Load(), st.Allowed.Load(), st.Denied.Load()
		g.DNSMalformed, g.DNSUpstreamErrors, g.DNSOverload = st.Malformed.Load(), st.UpstreamErrors.Load(), st.Overload.Load()
		names := map[string]bool{}
		ips := map[netip.Addr]bool{}
		for _, e := range px.Cache().Entries() {
			if e.Zombie {
				continue
			}
			names[fmt.Sprint(e.Endpoint)+"/"+e.Name] = true
			ips[e.IP] = true
		}
		g.FQDNNames, g.FQDNIPs, g.FQDNZombies = len(names), len(ips), px.Cache().Zombies()
	}
	if a.obs.hub != nil {
		g.FlowsSeen, g.FlowsLost = a.obs.hub.Seen(), a.obs.hub.Lost()
	}
	if fe := a.flowEventsStatus(); fe != nil {
		g.BPFEventsRead, g.BPFEventsLost = fe.Read, fe.Lost
	}
	return g
}

func xdsShortName(typeURL string) string {
	switch typeURL {
	case resource.ListenerType:
		return "listener"
	case resource.ClusterType:
		return "cluster"
	case npds.NetworkPolicyType:
		return "network_policy"
	case npds.NetworkPolicyHostsType:
		return "network_policy_hosts"
	}
	return strings.ToLower(typeURL[strings.LastIndexByte(typeURL, '.')+1:])
}
