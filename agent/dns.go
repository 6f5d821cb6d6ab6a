package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/wardproxy/ward/agent/ipcache"
	"github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/xds/npds"
)

// dnsGlue connects the DNS proxy to the agent: local endpoints by source
// address, DNS rules from the current resolved state, FQDN identities
// from the policy repository, and a re-publish (ipcache, policy maps, proxy
// resources) that completes before the proxy releases an answer.
type dnsGlue struct {
	e   *engine
	log *slog.Logger
	// flows is the agent's flow stream; nil: none.
	flows flow.Sink
	// hosts sends Envoy's identity table; nil without the in-Envoy
	// filters' resources. Apply and every FQDN claim wait (at most the
	// proxy's UpdateTimeout, set by newDNSProxy) for Envoy to apply it.
	hosts   *policyResources
	ackWait time.Duration
	// inUse tells whether an endpoint address still has a live flow to an
	// IP (the datapath's conntrack); nil: none known.
	inUse func(src, dst netip.Addr) (bool, error)
	// hostMode reads the host firewall's runtime audit override (the host
	// endpoint's DNS rules); nil: none.
	hostMode hostModeReader

	mu    sync.Mutex
	snap  *policy.Snapshot
	rules map[dnsKey]*dns.Matcher // compiled per snapshot

	selsMu  sync.Mutex
	lastSel string
	sink    interface {
		SetSelectors([]policy.PortRuleDNS) error
	}
}

type dnsKey struct {
	ep     uint64
	port   uint16
	remote policy.NumericIdentity
}

var (
	_ dns.EndpointLookup    = (*dnsGlue)(nil)
	_ dns.RuleSource        = (*dnsGlue)(nil)
	_ dns.IdentityAllocator = (*dnsGlue)(nil)
	_ dns.PolicyUpdater     = (*dnsGlue)(nil)
)

// Endpoint implements dns.EndpointLookup over the local endpoints.
func (g *dnsGlue) Endpoint(src netip.Addr) (uint64, uint32, bool) {
	w, ok := g.e.workload(src)
	if !ok || w.Remote {
		return g.hostDNSEndpoint(src) // the host's own queries (hostfw.go)
	}
	p, ok := g.e.state().Policy.Endpoint(w.ID)
	if !ok {
		return 0, 0, false
	}
	return w.ID, uint32(p.Identity), true
}

// remoteIdentity is the identity of a destination address: a workload's,
// else a CIDR identity, else world.
func (g *dnsGlue) remoteIdentity(snap *policy.Snapshot, ip netip.Addr) policy.NumericIdentity {
	if w, ok := g.e.workload(ip); ok {
		if p, ok := snap.Endpoint(w.ID); ok {
			return p.Identity
		}
	}
	return snap.IdentityForIP(ip.Unmap())
}

// DNSRules implements dns.RuleSource: the union of the DNS rules of the
// endpoint's egress selections on the query's port that select the
// server's identity. A selection without DNS rules (plain L4 allow to the
// server) allows every name.
func (g *dnsGlue) DNSRules(endpoint uint64, dst netip.AddrPort) (*dns.Matcher, bool) {
	snap := g.e.state().Policy
	remote := g.remoteIdentity(snap, dst.Addr())
	k := dnsKey{ep: endpoint, port: dst.Port(), remote: remote}
	g.mu.Lock()
	if g.snap != snap {
		g.snap, g.rules = snap, map[dnsKey]*dns.Matcher{}
	}
	if m, ok := g.rules[k]; ok {
		g.mu.Unlock()
		return m, m != nil
	}
	g.mu.Unlock()
	var m *dns.Matcher
	if p, ok := snap.Endpoint(endpoint); ok && p.Egress != nil {
		if rules, found := p.Egress.DNSRules(remote, dst.Port()); found {
			var err error // nil rules: an empty rule list allows every name
			if m, err = dns.Compile(rules); err != nil {
				g.log.Error("dns rules", "endpoint", endpoint, "error", err)
				m = nil
			}
		}
	}
	g.mu.Lock()
	g.rules[k] = m
	g.mu.Unlock()
	return m, m != nil
}

// AllocateFQDN implements dns.IdentityAllocator with the repository, so
// toFQDNs selections pick the identity up at the next resolution.
func (g *dnsGlue) AllocateFQDN(selectors []string) (uint32, error) {
	return g.e.repo.AllocateFQDN(selectors)
}

// Apply implements dns.PolicyUpdater: it re-resolves and writes the maps
// and proxy resources, and waits for Envoy to apply the new policies and
// identity table, before returning, so the answer that taught the IP is
// released only once a connection to it is allowed, L7 rules included.
func (g *dnsGlue) Apply(ctx context.Context, _ []uint32) error {
	done := make(chan struct{})
	go func() { g.e.publish(context.WithoutCancel(ctx)); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if g.hosts == nil {
		return nil
	}
	pv, hv := g.hosts.versions()
	ctx, cancel := context.WithTimeout(ctx, g.ackWait)
	defer cancel()
	if err := g.hosts.waitAcked(ctx, npds.NetworkPolicyHostsType, hv); err != nil {
		return err
	}
	return g.hosts.waitAcked(ctx, npds.NetworkPolicyType, pv)
}

// fqdnClaims is the DNS proxy's ipcache: the FQDN owner of the BPF
// ipcache, and Envoy's identity table, which must learn an IP as the
// datapath does (ward.http and ward.kafka look the destination up there).
// An upsert returns once Envoy applied the table (at most ackWait): the
// proxy releases the answer after it.
type fqdnClaims struct {
	ipcache.Handle
	g *dnsGlue
}

var _ dns.IPCache = fqdnClaims{}

// Upsert implements dns.IPCache.
func (c fqdnClaims) Upsert(prefix netip.Prefix, identity uint32) error {
	if err := c.Handle.Upsert(prefix, identity); err != nil {
		return err
	}
	c.g.syncHosts()
	return nil
}

// Delete implements dns.IPCache.
func (c fqdnClaims) Delete(prefix netip.Prefix) error {
	if err := c.Handle.Delete(prefix); err != nil {
		return err
	}
	c.g.syncHosts()
	return nil
}

// syncHosts sends Envoy's identity table with the current FQDN claims and
// waits, at most ackWait, until Envoy applied it. A timeout is logged, not
// returned: the datapath has the claim, and Envoy gets the table when it
// is back.
func (g *dnsGlue) syncHosts() {
	if g.hosts == nil {
		return
	}
	v := g.hosts.syncHosts()
	ctx, cancel := context.WithTimeout(context.Background(), g.ackWait)
	defer cancel()
	if err := g.hosts.waitAcked(ctx, npds.NetworkPolicyHostsType, v); err != nil {
		g.log.Warn("envoy identity table", "hosts_version", v, "error", err)
	}
}

// syncSelectors gives the DNS proxy the state's toFQDNs selectors when
// they changed.
func (g *dnsGlue) syncSelectors(st *State) {
	var sels []policy.PortRuleDNS
	var key strings.Builder
	for _, m := range st.Policy.FQDNSelectors() {
		sels = append(sels, policy.PortRuleDNS{MatchName: m.Selector.MatchName, MatchPattern: m.Selector.MatchPattern})
		key.WriteString(m.Selector.MatchName + "\x00" + m.Selector.MatchPattern + "\x00")
	}
	g.selsMu.Lock()
	defer g.selsMu.Unlock()
	if g.sink == nil || key.String() == g.lastSel {
		return
	}
	if err := g.sink.SetSelectors(sels); err != nil {
		g.log.Error("dns proxy selectors", "error", err)
		return
	}
	g.lastSel = key.String()
}

// InUse implements dns.ConnTracker with the datapath's conntrack: an
// expired FQDN IP that one of the endpoint's addresses still has a live
// flow with is kept (a zombie), so the flow and new connections to the
// name keep working as in Cilium.
func (g *dnsGlue) InUse(endpoint uint64, ip netip.Addr) bool {
	w, ok := g.e.wl.Load().byID[endpoint]
	if !ok {
		return false
	}
	for _, a := range w.Addrs {
		live, err := g.inUse(a, ip.Unmap())
		if err != nil {
			// Unknown: keep the IP rather than cut a connection.
			g.log.Warn("conntrack lookup", "error", err)
			return true
		}
		if live {
			return true
		}
	}
	return false
}

var _ dns.ConnTracker = (*dnsGlue)(nil)

// newDNSProxy builds the transparent DNS proxy of the datapath mode with
// the node config's tunables (Config.DNS); the listeners and the state file
// are the agent's, whatever tun says.
func newDNSProxy(g *dnsGlue, ipc ipcache.Handle, tun dns.Config, port uint16, stateFile string, log *slog.Logger) (*dns.Proxy, error) {
	// No host: one dual-stack socket per protocol (AF_INET6 without
	// IPV6_V6ONLY, AF_INET on a kernel without IPv6), so IPv4 and IPv6
	// queries are both assigned to it; the proxy unmaps v4-mapped peers.
	addr := fmt.Sprintf(":%d", port)
	cfg := tun
	cfg.UDPAddr, cfg.TCPAddr, cfg.Transparent, cfg.Upstream, cfg.StateFile = addr, addr, true, netip.AddrPort{}, stateFile
	g.ackWait = cfg.UpdateTimeout
	if g.ackWait <= 0 {
		g.ackWait = dns.DefaultUpdateTimeout
	}
	if g.hosts != nil {
		g.hosts.fqdn = ipc.Claims
	}
	deps := dns.Deps{Endpoints: g, Rules: g, IPCache: fqdnClaims{Handle: ipc, g: g}, Identities: g, Policy: g, Logger: log, Flows: g.flows}
	if g.inUse != nil {
		deps.Conns = g
	}
	px, err := dns.New(cfg, deps)
	if err != nil {
		return nil, err
	}
	g.selsMu.Lock()
	g.sink = px
	g.selsMu.Unlock()
	return px, nil
}
