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
}

// State is what one publish hands to the consumers: the resolved policy
// snapshot and the workloads it was resolved for. It is immutable.
type State struct {
	Policy    *policy.Snapshot
	Workloads []Workload
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
type engine struct {
	repo *policy.Repository
	wl   atomic.Pointer[workloadSet] // replaced, never modified
	wlMu sync.Mutex                  // one setEndpoints at a time
	// nodeClaims are the other nodes' addresses with their identity
	// (remote-node, or their own with enableNodeSelectorLabels); fixed.
	nodeClaims map[netip.Prefix]uint32
	svcMu      sync.Mutex
	services   map[string]policy.ServiceInfo // by namespace/name
	consumers  []Consumer
	log        *slog.Logger
	// afterPublish runs after each publish, outside the publish lock (the
	// DNS proxy's selectors: relabelling cached IPs may allocate identities
	// and publish again).
	afterPublish func(*State)

	pubMu     sync.Mutex // one publish at a time (policy directory, DNS proxy)
	last      atomic.Pointer[State]
	published chan struct{} // closed after the first publish
	firstOnce sync.Once

	errMu sync.Mutex
	errs  map[string]error // consumer errors of the last publish, by consumer name
}

// workloadSet is the node's workloads at one time, indexed by address.
type workloadSet struct {
	list []Workload
	byIP map[netip.Addr]*Workload
	byID map[uint64]*Workload
}

func newEngine(cfg *Config, log *slog.Logger) (*engine, error) {
	e := &engine{repo: policy.NewRepository(policy.Config{Mode: policy.EnforcementMode(cfg.Mode)}), log: log, errs: map[string]error{}, published: make(chan struct{})}
	e.wl.Store(&workloadSet{byIP: map[netip.Addr]*Workload{}, byID: map[uint64]*Workload{}})
	if _, err := e.setEndpoints(cfg.Endpoints, "endpoints"); err != nil {
		return nil, err
	}
	e.setServices(cfg.Services)
	if err := e.setNodes(cfg.Nodes, cfg.EnableNodeSelectorLabels); err != nil {
		return nil, err
	}
	return e, nil
}

// setEndpoints makes eps the node's workloads: new and changed ones are
// upserted into the repository (identity from their labels), gone ones
// deleted. It reports whether anything changed. An endpoint that fails is
// reported (by its path under where): a new one is left out, a changed one
// stays as it was; the others apply.
func (e *engine) setEndpoints(eps []Endpoint, where string) (bool, error) {
	e.wlMu.Lock()
	defer e.wlMu.Unlock()
	old := e.wl.Load()
	next := &workloadSet{byIP: map[netip.Addr]*Workload{}, byID: map[uint64]*Workload{}}
	next.list = make([]Workload, 0, len(eps))
	var errs []error
	changed := false
	for i, ep := range eps {
		w, err := workloadOf(ep)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s[%d]: %w", where, i, err))
			continue
		}
		prev, had := old.byID[ep.ID]
		if !had || !sameRegistration(prev.Endpoint, ep) {
			if _, err := e.repo.UpsertEndpoint(w.registration); err != nil {
				errs = append(errs, fmt.Errorf("%s[%d]: %w", where, i, err))
				if had {
					// The change is refused; the endpoint stays as it was.
					next.list = append(next.list, *prev)
				}
				continue
			}
			changed = true
		} else if !slices.Equal(prev.IPs, ep.IPs) || prev.Interface != ep.Interface || prev.Remote != ep.Remote || prev.Name != ep.Name {
			changed = true
		}
		next.list = append(next.list, w.Workload)
	}
	for i := range next.list {
		w := &next.list[i]
		next.byID[w.ID] = w
		for _, a := range w.Addrs {
			next.byIP[a] = w
		}
	}
	for id := range old.byID {
		if _, ok := next.byID[id]; !ok {
			e.repo.DeleteEndpoint(id)
			changed = true
		}
	}
	e.wl.Store(next)
	return changed, errors.Join(errs...)
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

// setNodes gives the other nodes' addresses their identity: with
// selector labels one allocated from each node's labels (and known to the
// repository's selectors), else remote-node.
func (e *engine) setNodes(nodes []Node, selectorLabels bool) error {
	e.nodeClaims = map[netip.Prefix]uint32{}
	for i, n := range nodes {
		id := policy.IdentityRemoteNode
		if selectorLabels {
			ident, _, err := e.repo.Allocator().Allocate(policy.RemoteNodeLabels(n.Labels))
			if err != nil {
				return fmt.Errorf("nodes[%d]: identity: %w", i, err)
			}
			e.repo.UpsertIdentity(ident)
			id = ident.ID
		}
		for j, a := range n.Addresses {
			p, err := parseAddrOrPrefix(a)
			if err != nil {
				return fmt.Errorf("nodes[%d].addresses[%d]: %w", i, j, err)
			}
			e.nodeClaims[p] = uint32(id)
		}
	}
	return nil
}

// workloads returns the current workloads.
func (e *engine) workloads() []Workload { return e.wl.Load().list }

// state returns the last published state (resolving one if none was
// published yet).
func (e *engine) state() *State {
	if s := e.last.Load(); s != nil {
		return s
	}
	return &State{Policy: e.repo.Snapshot(), Workloads: e.workloads()}
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
	st := &State{Policy: e.repo.Snapshot(), Workloads: e.workloads()}
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
