package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/policy/dirsource"
	"github.com/wardproxy/ward/xds"
)

// endpointConfig is a local workload in embedded mode (no Kubernetes).
type endpointConfig struct {
	Name      string            `json:"name"`
	ID        uint64            `json:"id"`
	IPs       []string          `json:"ips"`
	Labels    map[string]string `json:"labels"`
	Namespace string            `json:"namespace"`
	// Remote marks a workload of another node (or a client outside ward's
	// control): it gets an identity and its addresses are in the identity
	// table, but no policy is enforced for it here.
	Remote bool `json:"remote,omitempty"`
	// Interface is the host-side interface of a local endpoint (its veth),
	// where the datapath attaches; needed when the datapath is enabled.
	Interface string `json:"interface,omitempty"`
}

// policyEngine turns the policy directory and the endpoints into the
// policy resources: the repository resolves, xds translates.
type policyEngine struct {
	repo *policy.Repository
	eps  []endpointConfig
	ips  map[uint64][]netip.Addr
	byIP map[netip.Addr]endpointConfig // every workload address
	srv  *xds.Server
	log  *slog.Logger
	dp   *datapath // nil without the datapath

	pubMu sync.Mutex // one publish at a time (policy directory, DNS proxy)
	last  atomic.Pointer[policy.Snapshot]

	// dns, when set, learns the toFQDNs selectors of every snapshot.
	dns interface {
		SetSelectors([]policy.PortRuleDNS) error
	}
	selsMu  sync.Mutex
	lastSel string
}

// syncSelectors gives the DNS proxy the snapshot's toFQDNs selectors when
// they changed. It runs outside pubMu: relabelling cached IPs may allocate
// identities and publish again.
func (e *policyEngine) syncSelectors(snap *policy.Snapshot) {
	if e.dns == nil {
		return
	}
	var sels []policy.PortRuleDNS
	var key strings.Builder
	for _, m := range snap.FQDNSelectors() {
		sels = append(sels, policy.PortRuleDNS{MatchName: m.Selector.MatchName, MatchPattern: m.Selector.MatchPattern})
		key.WriteString(m.Selector.MatchName + "\x00" + m.Selector.MatchPattern + "\x00")
	}
	e.selsMu.Lock()
	defer e.selsMu.Unlock()
	if key.String() == e.lastSel {
		return
	}
	if err := e.dns.SetSelectors(sels); err != nil {
		e.log.Error("dns proxy selectors", "error", err)
		return
	}
	e.lastSel = key.String()
}

// snapshot returns the last published snapshot (resolving one if none was
// published yet).
func (e *policyEngine) snapshot() *policy.Snapshot {
	if s := e.last.Load(); s != nil {
		return s
	}
	return e.repo.Snapshot()
}

func newPolicyEngine(cfg *nodeConfig, srv *xds.Server, log *slog.Logger) (*policyEngine, error) {
	pc := policy.Config{Mode: policy.EnforcementMode(cfg.Mode)}
	if err := pc.Validate(); err != nil {
		return nil, fmt.Errorf("config mode: %w", err)
	}
	e := &policyEngine{repo: policy.NewRepository(pc), eps: cfg.Endpoints, ips: map[uint64][]netip.Addr{}, byIP: map[netip.Addr]endpointConfig{}, srv: srv, log: log}
	for i, ep := range cfg.Endpoints {
		if ep.ID == 0 {
			return nil, fmt.Errorf("endpoints[%d].id is required", i)
		}
		for j, s := range ep.IPs {
			ip, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("endpoints[%d].ips[%d]: %w", i, j, err)
			}
			e.ips[ep.ID] = append(e.ips[ep.ID], ip.Unmap())
			e.byIP[ip.Unmap()] = ep
		}
		ns := ep.Namespace
		if ns == "" {
			ns = "default"
		}
		if _, err := e.repo.UpsertEndpoint(policy.Endpoint{ID: ep.ID, Labels: policy.K8sLabels(ep.Labels, ns)}); err != nil {
			return nil, fmt.Errorf("endpoints[%d]: %w", i, err)
		}
	}
	return e, nil
}

// publish resolves every local endpoint and sends the resources.
func (e *policyEngine) publish() {
	snap := e.publishLocked()
	e.syncSelectors(snap)
}

func (e *policyEngine) publishLocked() *policy.Snapshot {
	e.pubMu.Lock()
	defer e.pubMu.Unlock()
	snap := e.repo.Snapshot()
	ws := make([]xds.Workload, 0, len(e.eps))
	for _, ep := range e.eps {
		ws = append(ws, xds.Workload{Name: ep.Name, ID: ep.ID, IPs: e.ips[ep.ID], Remote: ep.Remote})
	}
	ps, hosts := xds.Resources(snap, ws)
	// The datapath first: the proxy must know a policy before traffic is
	// redirected to it for that policy; map writes are in place.
	if e.dp != nil {
		if err := e.dp.apply(snap, e.eps, e.ips); err != nil {
			e.log.Error("datapath update", "error", err)
		}
	}
	hv := e.srv.SetHosts(hosts)
	pv := e.srv.SetPolicies(ps)
	e.last.Store(snap)
	e.log.Info("policy published", "revision", snap.Revision, "endpoints", len(ps), "policy_version", pv, "hosts_version", hv)
	return snap
}

// run watches the policy directory until ctx is done.
func (e *policyEngine) run(ctx context.Context, dir string) error {
	src := &dirsource.Source{Dir: dir, Sink: e.repo, Logger: e.log, Interval: 500 * time.Millisecond, OnChange: e.publish}
	if err := src.Sync(); err != nil {
		e.log.Warn("policy directory", "dir", dir, "error", err)
	}
	e.publish()
	if err := src.Run(ctx); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}
