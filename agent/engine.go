package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
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
	repo      *policy.Repository
	workloads []Workload
	byIP      map[netip.Addr]*Workload // every workload address
	consumers []Consumer
	log       *slog.Logger
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

func newEngine(cfg *Config, log *slog.Logger) (*engine, error) {
	e := &engine{repo: policy.NewRepository(policy.Config{Mode: policy.EnforcementMode(cfg.Mode)}), byIP: map[netip.Addr]*Workload{}, log: log, errs: map[string]error{}, published: make(chan struct{})}
	e.workloads = make([]Workload, len(cfg.Endpoints))
	for i, ep := range cfg.Endpoints {
		w := &e.workloads[i]
		w.Endpoint = ep
		for j, s := range ep.IPs {
			ip, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("endpoints[%d].ips[%d]: %w", i, j, err)
			}
			w.Addrs = append(w.Addrs, ip.Unmap())
			e.byIP[ip.Unmap()] = w
		}
		ns := ep.Namespace
		if ns == "" {
			ns = "default"
		}
		var named []policy.NamedPort
		for j, cp := range ep.Ports {
			np, err := cp.namedPort()
			if err != nil {
				return nil, fmt.Errorf("endpoints[%d].ports[%d]: %w", i, j, err)
			}
			named = append(named, np)
		}
		if _, err := e.repo.UpsertEndpoint(policy.Endpoint{ID: ep.ID, Labels: policy.K8sLabels(ep.Labels, ns), NamedPorts: named}); err != nil {
			return nil, fmt.Errorf("endpoints[%d]: %w", i, err)
		}
	}
	return e, nil
}

// state returns the last published state (resolving one if none was
// published yet).
func (e *engine) state() *State {
	if s := e.last.Load(); s != nil {
		return s
	}
	return &State{Policy: e.repo.Snapshot(), Workloads: e.workloads}
}

// workload returns the workload owning addr.
func (e *engine) workload(addr netip.Addr) (*Workload, bool) {
	w, ok := e.byIP[addr.Unmap()]
	return w, ok
}

// identity returns the security identity the repository gives a workload.
func (e *engine) identity(id uint64) (uint32, bool) {
	if p, ok := e.state().Policy.Endpoint(id); ok {
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
	st := &State{Policy: e.repo.Snapshot(), Workloads: e.workloads}
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
