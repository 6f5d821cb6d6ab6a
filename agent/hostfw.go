package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/wardproxy/ward/agent/api"
	"github.com/wardproxy/ward/bpf/policymap"
	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/policy"
	l7kind "github.com/wardproxy/ward/policy/l7"
)

// The host firewall (docs/host-firewall.md): host policies (nodeSelector)
// are enforced for the node itself on its native devices
// (datapath.devices). The node is the host endpoint of the policy
// repository: the reserved:host label plus the labels of the nodes entry
// named like this node (`node`); its resolved policy is written into the
// BPF policy map under redirect.HostEndpointID and enforced by the host
// firewall's programs (bpf/redirect/hostfw.h). Egress DNS rules send the
// host's queries to the DNS proxy, which knows the host endpoint by its
// addresses (hostDNSEndpoint). A host endpoint that no
// host policy selects allows everything (Cilium's host endpoint without
// policy).

// HostFirewallConfig is the node config's hostFirewall block (Cilium's
// enable-host-firewall and the host endpoint's PolicyAuditMode).
type HostFirewallConfig struct {
	// Enabled enforces host policies on the native devices
	// (datapath.devices); needs the datapath. Default false: host
	// policies are accepted and not enforced (`ward status` says so).
	Enabled bool `json:"enabled,omitempty"`
	// Audit puts the host endpoint in policy audit mode: packets its
	// policy would drop pass and are counted (`ward bpf counters`,
	// reason host-audit). `ward bpf host-firewall audit|enforce`
	// overrides it until wardd restarts.
	Audit bool `json:"audit,omitempty"`
}

// hostEndpointKey is the host endpoint's id in the policy repository (the
// same number as in the BPF policy map); workloads cannot use it.
const hostEndpointKey = uint64(redirect.HostEndpointID)

// validateHostFirewall checks the hostFirewall block against the rest of
// the config.
func (c *Config) validateHostFirewall() error {
	var errs []error
	if c.HostFirewall.Enabled {
		if !c.Datapath.Enabled {
			errs = append(errs, errors.New("hostFirewall.enabled needs datapath.enabled"))
		}
		if len(c.Datapath.Devices) == 0 {
			errs = append(errs, errors.New("hostFirewall.enabled needs datapath.devices (the native devices it is enforced on)"))
		}
	}
	for i, ep := range c.Endpoints {
		if ep.ID == hostEndpointKey {
			errs = append(errs, fmt.Errorf("endpoints[%d].id %d is the host endpoint's", i, ep.ID))
		}
	}
	return errors.Join(errs...)
}

// hostLabels are the host endpoint's labels: reserved:host and the labels
// of the nodes entry named node.
func hostLabels(nodes []Node, node string) policy.Labels {
	var m map[string]string
	for _, n := range nodes {
		if n.Name == node {
			m = n.Labels
			break
		}
	}
	ls := policy.K8sLabels(m, "")
	return policy.NewLabels(append(ls, policy.Label{Source: policy.SourceReserved, Key: "host"})...)
}

// openHostFirewall registers the host endpoint and attaches the host
// firewall to the native devices (Agent.Run, after the datapath is open,
// before the first publish). With the host firewall disabled it detaches
// what a previous run left attached.
func (a *Agent) openHostFirewall() error {
	d := a.dp
	cfg := a.cfg.HostFirewall
	if !cfg.Enabled {
		return errors.Join(d.dp.DetachHostFirewalls(), d.dp.SetHost(redirect.HostEndpoint{}))
	}
	if a.eng == nil {
		return nil
	}
	if _, err := a.eng.repo.UpsertEndpoint(policy.Endpoint{ID: hostEndpointKey, Labels: hostLabels(a.cfg.Nodes, a.node), Audit: cfg.Audit}); err != nil {
		return fmt.Errorf("host endpoint: %w", err)
	}
	// The DNS proxy's upstream queries act for the endpoints (the host's
	// own, with DNS rules, among them): marked as a proxy's upstream with
	// the host identity, host_out leaves them to the pods' path, as
	// Cilium marks its proxies' upstreams.
	a.cfg.DNS.Mark = int(redirect.ProxyEgressMark(redirect.IdentityHost))
	// Audit mode set at runtime does not survive a restart (as in Cilium).
	if err := redirect.SetHostMode(d.dp.PinDir(), redirect.HostModeConfig); err != nil {
		return fmt.Errorf("host firewall: %w", err)
	}
	for i, name := range a.cfg.Datapath.Devices {
		ifc, err := net.InterfaceByName(name)
		if err == nil {
			err = d.dp.AttachHostFirewall(ifc.Index)
		}
		if err != nil {
			return fmt.Errorf("hostFirewall: datapath.devices[%d] %q: %w", i, name, err)
		}
	}
	d.mu.Lock()
	d.host.on = true
	d.mu.Unlock()
	a.log.Info("host firewall attached", "devices", a.cfg.Datapath.Devices, "audit", cfg.Audit)
	return nil
}

// hostState is the datapath consumer's host endpoint state (under
// datapath.mu).
type hostState struct {
	on      bool                   // the host firewall is attached
	applied *policy.EndpointPolicy // the policy last written
	warn    error                  // what the last write reported (DNS rules)
}

// applyHost writes the host endpoint's policy (Apply). Egress DNS rules
// redirect the host's queries to the DNS proxy (hostfw.h); ingress DNS
// rules have no proxy path on the native devices: their ports are denied
// (fail closed) and the publish reports it. A policy that cannot be produced or
// written locks the host endpoint down (all its traffic on the native
// devices dropped; `ward bpf host-firewall off` is the way back in).
func (d *datapath) applyHost(snap *policy.Snapshot) error {
	d.mu.Lock()
	on := d.host.on
	d.mu.Unlock()
	if !on {
		return nil
	}
	pol, ok := snap.Endpoint(hostEndpointKey)
	if !ok {
		return d.dp.SetHost(redirect.HostEndpoint{})
	}
	d.mu.Lock()
	same, warn := d.host.applied == pol, d.host.warn
	d.mu.Unlock()
	if same {
		return warn
	}
	var entries []redirect.PolicyEntry
	var warns []error
	for _, x := range []struct {
		dir policy.Direction
		dp  *policy.DirectionPolicy
	}{{policy.Ingress, pol.Ingress}, {policy.Egress, pol.Egress}} {
		es, err := policymap.Entries(x.dir, x.dp, d.hostProxyPort)
		if err != nil {
			return d.lockHost(err)
		}
		entries = append(entries, es...)
		if x.dp == nil {
			continue
		}
		for _, l := range x.dp.Proxy {
			if l.Kind == l7kind.KindDNS && x.dir == policy.Ingress {
				warns = append(warns, fmt.Errorf("host policy: DNS rules on %v port %d are not enforced on the native devices: the port is denied", x.dir, l.Port))
			}
		}
	}
	if err := d.w.SetPolicy(redirect.HostEndpointID, entries); err != nil {
		if errors.Is(err, redirect.ErrPolicyMapFull) {
			d.forgetHost()
			return fmt.Errorf("host endpoint: %w", err) // locked down by SetPolicy
		}
		return d.lockHost(err)
	}
	h := redirect.HostEndpoint{
		EnforceIngress: pol.Ingress != nil && pol.Ingress.Enforced,
		EnforceEgress:  pol.Egress != nil && pol.Egress.Enforced,
		Audit:          pol.Audit,
	}
	if err := d.dp.SetHost(h); err != nil {
		return d.lockHost(err)
	}
	warn = errors.Join(warns...)
	d.mu.Lock()
	d.host.applied, d.host.warn = pol, warn
	d.mu.Unlock()
	return warn
}

// hostProxyPort is the host endpoint's proxy for a port with L7 rules:
// the DNS proxy for egress DNS rules (the only L7 rules host policies may
// have), none otherwise (the port is denied).
func (d *datapath) hostProxyPort(dir policy.Direction, l7 *policy.L7Port) uint16 {
	if dir == policy.Egress && l7.Kind == l7kind.KindDNS {
		return d.cfg.DNSPort
	}
	return 0
}

// hostDNSEndpoint is the DNS proxy's endpoint lookup for a query from one
// of the node's own addresses: the host endpoint, when the host firewall
// registered it (its egress DNS rules redirect the host's queries).
func (g *dnsGlue) hostDNSEndpoint(src netip.Addr) (uint64, uint32, bool) {
	if _, ok := g.e.state().Policy.Endpoint(hostEndpointKey); !ok {
		return 0, 0, false
	}
	addrs, err := hostAddrs()
	if err != nil || !slices.Contains(addrs, src.Unmap()) {
		return 0, 0, false
	}
	return hostEndpointKey, uint32(policy.IdentityHost), true
}

// hostModeReader reads the operator's runtime override of the host
// endpoint's audit mode (redirect.Datapath.HostMode).
type hostModeReader func() (redirect.HostMode, error)

// hostDNSAudit is the DNS proxy's audit mode for the host endpoint: the
// configured one (hostFirewall.audit), unless `ward bpf host-firewall
// audit|enforce` overrides it, as it does for the host firewall's L3/L4.
func (g *dnsGlue) hostDNSAudit(configured bool) bool {
	return hostAudit(g.hostMode, configured, g.log)
}

// hostAudit is the host endpoint's effective audit mode: configured,
// unless the runtime override (read) says otherwise.
func hostAudit(read hostModeReader, configured bool, log *slog.Logger) bool {
	if read == nil {
		return configured
	}
	m, err := read()
	if err != nil {
		log.Warn("host firewall mode", "error", err)
		return configured
	}
	switch m {
	case redirect.HostModeAudit:
		return true
	case redirect.HostModeEnforce:
		return false
	}
	return configured
}

// lockHost locks the host endpoint down after err (its policy could not
// be produced or written) and returns err with the lockdown's outcome.
func (d *datapath) lockHost(err error) error {
	d.forgetHost()
	return fmt.Errorf("host endpoint (locked down): %w", errors.Join(err, d.w.Lockdown(redirect.HostEndpointID)))
}

func (d *datapath) forgetHost() {
	d.mu.Lock()
	d.host.applied, d.host.warn = nil, nil
	d.mu.Unlock()
}

// hostEndpointDetail is the host endpoint as `ward endpoint list` shows it
// (Cilium's reserved:host endpoint): present while the host firewall is
// on. Its state is locked-down when its policy could not be written; the
// error names what the last publish reported (DNS rules on ingress). Audit
// is the effective mode (the runtime override applied).
func (a *Agent) hostEndpointDetail(last *State, current *policy.Snapshot, withRules bool) (api.EndpointDetail, bool) {
	if a.dp == nil {
		return api.EndpointDetail{}, false
	}
	a.dp.mu.Lock()
	on, warn := a.dp.host.on, a.dp.host.warn
	a.dp.mu.Unlock()
	if !on {
		return api.EndpointDetail{}, false
	}
	d := api.EndpointDetail{Endpoint: api.Endpoint{Name: "host", ID: hostEndpointKey, State: api.StateReady}, Interface: strings.Join(a.cfg.Datapath.Devices, ",")}
	p, ok := (*policy.EndpointPolicy)(nil), false
	if last != nil {
		p, ok = last.Policy.Endpoint(hostEndpointKey)
		d.PolicyRevision = last.Policy.Revision
	}
	if !ok {
		p, ok = current.Endpoint(hostEndpointKey)
		d.PolicyRevision = 0
	}
	if ok {
		d.Identity = uint32(p.Identity)
		d.Labels = p.Labels.Strings()
		d.EnforceIngress = p.Ingress != nil && p.Ingress.Enforced
		d.EnforceEgress = p.Egress != nil && p.Egress.Enforced
		d.Audit = hostAudit(a.dp.dp.HostMode, p.Audit, a.log)
		if withRules {
			d.Rules = a.rulesOf(p)
		}
	}
	if addrs, err := hostAddrs(); err == nil {
		for _, ip := range addrs {
			d.IPs = append(d.IPs, ip.String())
		}
	}
	if warn != nil {
		d.Error = warn.Error()
	}
	if a.dp.dp.Locked(redirect.HostEndpointID) {
		d.State = api.StateLockedDown
	}
	return d, true
}
