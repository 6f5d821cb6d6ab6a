package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/wardproxy/ward/policy"
)

// Workload is an endpoint of the node configuration with its parsed
// addresses.
type Workload struct {
	Endpoint
	Addrs []netip.Addr
	// source is the engine source that set it (sourceConfig, sourceKube).
	source string
}

// State is what one publish hands to the consumers: the resolved policy
// snapshot and the workloads it was resolved for. It is immutable.
type State struct {
	Policy    *policy.Snapshot
	Workloads []Workload
	// Nodes are the node sources' claims at the time: the other nodes'
	// addresses and the kube-apiserver's with their identity (host.go's
	// nodeClaims adds the static ones and the host's own).
	Nodes map[netip.Prefix]uint32
}

// Consumer turns each published State into its part of the node's
// enforcement (BPF maps, Envoy's policy resources). The engine calls Apply
// synchronously, one publish at a time, in the order the consumers were
// given: the datapath before the proxies' resources, so a proxy knows a
// policy before traffic is redirected to it for that policy. An error is
// reported in the agent's status; the consumer itself must leave the
// affected part fail-closed.
type Consumer interface {
	Apply(ctx context.Context, st *State) error
}

// ConsumerFunc adapts a function to Consumer.
type ConsumerFunc func(ctx context.Context, st *State) error

// Apply implements Consumer.
func (f ConsumerFunc) Apply(ctx context.Context, st *State) error { return f(ctx, st) }

// engine resolves the policy repository for the node's workloads and
// publishes each new state to the consumers.
//
// Several sources feed it: the node config with its directories
// (sourceConfig) and Kubernetes (sourceKube). Each source sets its own
// list of endpoints, services and nodes; the engine applies their union,
// the sources taken in name order ("config" before "kubernetes"): an
// endpoint id, or a service's namespace/name, that an earlier source
// already holds is an error of that one item (reported in the status,
// the item left out), never a failure of the source. A source that sets
// its list again changes only what it holds: the repository sees the
// upserts and deletes of that source's changed items.
type engine struct {
	repo  *policy.Repository
	wl    atomic.Pointer[workloadSet] // replaced, never modified
	wlMu  sync.Mutex                  // one setEndpoints at a time; guards epSrc
	epSrc map[string][]Endpoint       // each source's endpoints, as last set
	audit auditModes                  // policy audit mode per endpoint (audit.go); guarded by wlMu
	// nodeMu guards the node sources; nodes is the claims they make: the
	// other nodes' addresses with their identity (remote-node, or their
	// own with enableNodeSelectorLabels) and the kube-apiserver's
	// addresses (kube-apiserver, over a node's), replaced, never modified.
	nodeMu         sync.Mutex
	nodeSrc        map[string][]Node
	apiSrc         map[string][]netip.Prefix
	nodeIDs        map[string]*policy.Identity // identities held for node labels, by labels
	selectorLabels bool
	nodes          atomic.Pointer[map[netip.Prefix]uint32]
	svcMu          sync.Mutex
	svcSrc         map[string][]Service
	services       map[string]policy.ServiceInfo // by namespace/name
	consumers      []Consumer
	log            *slog.Logger
	// afterPublish runs after each publish, outside the publish lock (the
	// DNS proxy's selectors: relabelling cached IPs may allocate identities
	// and publish again).
	afterPublish func(*State)

	pubMu     sync.Mutex // one publish at a time (policy directory, DNS proxy)
	last      atomic.Pointer[State]
	published chan struct{} // closed after the first publish
	firstOnce sync.Once

	errMu   sync.Mutex
	errs    map[string]error // consumer errors of the last publish, by consumer name
	srcErrs map[string]error // each source's item errors of its last set, by "what source"
}

// The engine's sources.
const (
	sourceConfig = "config"     // the node config and its directories
	sourceKube   = "kubernetes" // the Kubernetes informers (agent/kube)
)

// workloadSet is the node's workloads at one time, indexed by address.
type workloadSet struct {
	list []Workload
	byIP map[netip.Addr]*Workload
	byID map[uint64]*Workload
}

func newEngine(cfg *Config, log *slog.Logger) (*engine, error) {
	filter, err := cfg.labelFilter()
	if err != nil {
		return nil, err
	}
	e := &engine{repo: policy.NewRepository(policy.Config{Mode: policy.EnforcementMode(cfg.Mode), LabelFilter: filter, ClusterName: cfg.clusterName()}), log: log, errs: map[string]error{}, published: make(chan struct{}),
		epSrc: map[string][]Endpoint{}, nodeSrc: map[string][]Node{}, apiSrc: map[string][]netip.Prefix{}, nodeIDs: map[string]*policy.Identity{},
		svcSrc: map[string][]Service{}, srcErrs: map[string]error{}, selectorLabels: cfg.EnableNodeSelectorLabels}
	e.wl.Store(&workloadSet{byIP: map[netip.Addr]*Workload{}, byID: map[uint64]*Workload{}})
	if e.audit, err = loadAuditModes(cfg.PolicyAuditMode, cfg.StateDir); err != nil {
		return nil, err
	}
	e.nodes.Store(&map[netip.Prefix]uint32{})
	if _, err := e.setEndpoints(sourceConfig, cfg.Endpoints, "endpoints"); err != nil {
		return nil, err
	}
	e.setServices(sourceConfig, cfg.Services)
	if _, err := e.setNodes(sourceConfig, cfg.Nodes); err != nil {
		return nil, err
	}
	return e, nil
}

// setEndpoints makes eps the endpoints of source and the node's workloads
// the union of every source's: new and changed ones are upserted into the
// repository (identity from their labels), gone ones deleted. It reports
// whether anything changed. An endpoint that fails is reported (by its
// path under where, or by its name when where is empty): a new one is left
// out, a changed one stays as it was; the others apply. The error is also
// the source's item error in the status until its next set.
func (e *engine) setEndpoints(source string, eps []Endpoint, where string) (bool, error) {
	e.wlMu.Lock()
	defer e.wlMu.Unlock()
	e.epSrc[source] = eps
	old := e.wl.Load()
	next := &workloadSet{byIP: map[netip.Addr]*Workload{}, byID: map[uint64]*Workload{}}
	errs := map[string][]error{} // by source
	changed := false
	// owner is the item holding each endpoint id; items are named only
	// for errors (a set of 5,000 endpoints is not formatted each time).
	type item struct {
		src string
		i   int
	}
	total := 0
	for _, l := range e.epSrc {
		total += len(l)
	}
	owner := make(map[uint64]item, total)
	nameOf := func(it item) string {
		if where == "" || it.src != source {
			return fmt.Sprintf("%s endpoint %q", it.src, e.epSrc[it.src][it.i].Name)
		}
		return fmt.Sprintf("%s[%d]", where, it.i)
	}
	next.list = make([]Workload, 0, total)
	next.byID = make(map[uint64]*Workload, total)
	next.byIP = make(map[netip.Addr]*Workload, total)
	for _, src := range slices.Sorted(maps.Keys(e.epSrc)) {
		list := e.epSrc[src]
		for i, ep := range list {
			name := item{src, i}
			if prev, taken := owner[ep.ID]; taken {
				errs[src] = append(errs[src], fmt.Errorf("%s: endpoint id %d is already taken by %s", nameOf(name), ep.ID, nameOf(prev)))
				continue
			}
			prev, had := old.byID[ep.ID]
			if had && prev.source == src && slices.Equal(prev.IPs, ep.IPs) && sameRegistration(prev.Endpoint, ep) {
				// What the repository knows and the addresses are
				// unchanged: the workload is reused, not parsed again (a
				// source of 5,000 pods sets them all on one pod's change).
				if prev.Interface != ep.Interface || prev.Remote != ep.Remote || prev.Name != ep.Name {
					changed = true
				}
				w := *prev
				w.Endpoint = ep
				owner[ep.ID] = name
				next.list = append(next.list, w)
				continue
			}
			w, err := workloadOf(ep)
			if err != nil {
				errs[src] = append(errs[src], fmt.Errorf("%s: %w", nameOf(name), err))
				continue
			}
			w.source = src
			if !had || prev.source != src || !sameRegistration(prev.Endpoint, ep) {
				w.registration.Audit = e.auditOf(ep.ID)
				if _, err := e.repo.UpsertEndpoint(w.registration); err != nil {
					errs[src] = append(errs[src], fmt.Errorf("%s: %w", nameOf(name), err))
					if had && prev.source == src {
						// The change is refused; the endpoint stays as it was.
						owner[ep.ID] = name
						next.list = append(next.list, *prev)
					}
					continue
				}
				changed = true
			} else if !slices.Equal(prev.IPs, ep.IPs) || prev.Interface != ep.Interface || prev.Remote != ep.Remote || prev.Name != ep.Name {
				changed = true
			}
			owner[ep.ID] = name
			next.list = append(next.list, w.Workload)
		}
	}
	for i := range next.list {
		w := &next.list[i]
		next.byID[w.ID] = w
		for _, a := range w.Addrs {
			next.byIP[a] = w
		}
	}
	var gone []uint64
	for id := range old.byID {
		if _, ok := next.byID[id]; !ok {
			e.repo.DeleteEndpoint(id)
			changed = true
			gone = append(gone, id)
		}
	}
	e.forgetAudit(gone)
	e.wl.Store(next)
	for src := range e.epSrc {
		e.setSourceErr("endpoints "+src, errors.Join(errs[src]...))
	}
	return changed, errors.Join(errs[source]...)
}

// setConsumerErr replaces consumer c's error of the last publish (a
// consumer that re-applied on its own, like the TLS policy on a secret's
// change); nil clears it.
func (e *engine) setConsumerErr(c Consumer, err error) {
	name := fmt.Sprintf("%T", c)
	e.errMu.Lock()
	defer e.errMu.Unlock()
	if err == nil {
		delete(e.errs, name)
		return
	}
	e.errs[name] = err
}

// setSourceErr records a source's item errors (nil clears them).
func (e *engine) setSourceErr(key string, err error) {
	e.errMu.Lock()
	defer e.errMu.Unlock()
	if err == nil {
		delete(e.srcErrs, key)
		return
	}
	e.srcErrs[key] = err
}

// sourceErrors returns the sources' item errors, by source.
func (e *engine) sourceErrors() []string {
	e.errMu.Lock()
	defer e.errMu.Unlock()
	var out []string
	for _, k := range slices.Sorted(maps.Keys(e.srcErrs)) {
		out = append(out, e.srcErrs[k].Error())
	}
	return out
}

type registeredWorkload struct {
	Workload
	registration policy.Endpoint
}

func workloadOf(ep Endpoint) (registeredWorkload, error) {
	w := registeredWorkload{Workload: Workload{Endpoint: ep}}
	for j, s := range ep.IPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return w, fmt.Errorf("ips[%d]: %w", j, err)
		}
		w.Addrs = append(w.Addrs, ip.Unmap())
	}
	ns := ep.Namespace
	if ns == "" {
		ns = "default"
	}
	var named []policy.NamedPort
	for j, cp := range ep.Ports {
		np, err := cp.namedPort()
		if err != nil {
			return w, fmt.Errorf("ports[%d]: %w", j, err)
		}
		named = append(named, np)
	}
	w.registration = policy.Endpoint{ID: ep.ID, Labels: policy.K8sLabels(ep.Labels, ns), NamedPorts: named}
	return w, nil
}

// sameRegistration: what the repository knows of an endpoint is unchanged.
func sameRegistration(a, b Endpoint) bool {
	return a.Namespace == b.Namespace && maps.Equal(a.Labels, b.Labels) && slices.Equal(a.Ports, b.Ports)
}

// setNodes makes nodes the other nodes source knows and gives the union
// of every source's nodes their identity: with selector labels one
// allocated from each node's labels (and known to the repository's
// selectors), else remote-node. It reports whether the claims changed. A
// node that fails is reported and left out.
func (e *engine) setNodes(source string, nodes []Node) (bool, error) {
	e.nodeMu.Lock()
	defer e.nodeMu.Unlock()
	e.nodeSrc[source] = nodes
	return e.rebuildNodeClaims()
}

// setAPIServer makes addrs the kube-apiserver's addresses source knows
// (the kube-apiserver entity); the union of every source's counts. It
// reports whether the claims changed.
func (e *engine) setAPIServer(source string, addrs []netip.Prefix) bool {
	e.nodeMu.Lock()
	defer e.nodeMu.Unlock()
	e.apiSrc[source] = addrs
	changed, _ := e.rebuildNodeClaims()
	return changed
}

// rebuildNodeClaims recomputes the node claims from the sources (nodeMu
// held). Identities of node labels no node has any more are released.
func (e *engine) rebuildNodeClaims() (bool, error) {
	claims := map[netip.Prefix]uint32{}
	held := map[string]*policy.Identity{}
	var errs []error
	for _, src := range slices.Sorted(maps.Keys(e.nodeSrc)) {
		for i, n := range e.nodeSrc[src] {
			where := fmt.Sprintf("nodes[%d]", i)
			if src != sourceConfig {
				where = fmt.Sprintf("%s node %q", src, n.Name)
			}
			var ps []netip.Prefix
			bad := false
			for j, a := range n.Addresses {
				p, err := parseAddrOrPrefix(a)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s.addresses[%d]: %w", where, j, err))
					bad = true
					break
				}
				ps = append(ps, p)
			}
			if bad {
				continue
			}
			id := policy.IdentityRemoteNode
			if e.selectorLabels {
				ls := policy.RemoteNodeLabels(n.Labels)
				key := ls.String()
				ident := held[key]
				if ident == nil {
					ident = e.nodeIDs[key]
				}
				if ident == nil {
					var err error
					if ident, _, err = e.repo.Allocator().Allocate(ls); err != nil {
						errs = append(errs, fmt.Errorf("%s: identity: %w", where, err))
						continue
					}
					e.repo.UpsertIdentity(ident)
				}
				held[key] = ident
				id = ident.ID
			}
			for _, p := range ps {
				claims[p] = uint32(id)
			}
		}
	}
	for key, ident := range e.nodeIDs {
		if _, ok := held[key]; !ok {
			e.repo.DeleteIdentity(ident.ID)
			e.repo.Allocator().Release(ident.ID)
		}
	}
	e.nodeIDs = held
	for _, src := range slices.Sorted(maps.Keys(e.apiSrc)) {
		for _, p := range e.apiSrc[src] {
			claims[p] = uint32(policy.IdentityKubeAPIServer)
		}
	}
	changed := !maps.Equal(*e.nodes.Load(), claims)
	e.nodes.Store(&claims)
	err := errors.Join(errs...)
	e.setSourceErr("nodes", err)
	return changed, err
}

// nodeClaims returns the node sources' claims (immutable).
func (e *engine) nodeClaims() map[netip.Prefix]uint32 { return *e.nodes.Load() }

// workloads returns the current workloads.
func (e *engine) workloads() []Workload { return e.wl.Load().list }

// state returns the last published state (resolving one if none was
// published yet).
func (e *engine) state() *State {
	if s := e.last.Load(); s != nil {
		return s
	}
	return &State{Policy: e.repo.Snapshot(), Workloads: e.workloads(), Nodes: e.nodeClaims()}
}

// workload returns the workload owning addr.
func (e *engine) workload(addr netip.Addr) (*Workload, bool) {
	w, ok := e.wl.Load().byIP[addr.Unmap()]
	return w, ok
}

// currentIdentity returns the identity the repository gives a workload
// now (before it is published).
func (e *engine) currentIdentity(id uint64) (uint32, bool) {
	if p, ok := e.repo.Snapshot().Endpoint(id); ok {
		return uint32(p.Identity), true
	}
	return 0, false
}

// publish resolves the repository and hands the state to every consumer.
func (e *engine) publish(ctx context.Context) {
	st := e.publishLocked(ctx)
	if e.afterPublish != nil {
		e.afterPublish(st)
	}
}

func (e *engine) publishLocked(ctx context.Context) *State {
	e.pubMu.Lock()
	defer e.pubMu.Unlock()
	st := &State{Policy: e.repo.Snapshot(), Workloads: e.workloads(), Nodes: e.nodeClaims()}
	errs := map[string]error{}
	for _, c := range e.consumers {
		if err := c.Apply(ctx, st); err != nil {
			name := fmt.Sprintf("%T", c)
			errs[name] = err
			e.log.Error("policy consumer", "consumer", name, "revision", st.Policy.Revision, "error", err)
		}
	}
	e.errMu.Lock()
	e.errs = errs
	e.errMu.Unlock()
	e.last.Store(st)
	e.firstOnce.Do(func() { close(e.published) })
	e.log.Info("policy published", "revision", st.Policy.Revision)
	return st
}
