package agent

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/wardproxy/ward/agent/api"
	"github.com/wardproxy/ward/agent/kube"
	"github.com/wardproxy/ward/policy"
)

// kubePolicies is the agent's side of the Kubernetes policy source
// (kube.Policies) and its status writer.
type kubePolicies struct {
	pols   *kube.Policies
	status *kube.StatusWriter // nil with kubernetes.policyStatus false
	// pending: a policy change not published yet (made before the first
	// publish; whoever swaps it publishes).
	pending atomic.Bool
	mu      sync.Mutex
	counts  map[policy.Key]int // local endpoints with entries from each policy
	rev     uint64
}

// newKubePolicies registers the policy informers (before the client
// runs) and, with kubernetes.policyStatus, the status writer and the
// engine's consumer that counts, per policy, the local endpoints it gives
// entries to and triggers the writer.
func (a *Agent) newKubePolicies(ctx context.Context) *kubePolicies {
	kp := &kubePolicies{counts: map[policy.Key]int{}}
	kp.pols = a.kube.WatchPolicies(a.eng.repo, func() { a.kubePolicyChanged(ctx) })
	if !*a.kube.Config().PolicyStatus {
		return kp
	}
	kp.status = a.kube.NewStatusWriter(kp.pols, kp.enforcing)
	a.eng.consumers = append(a.eng.consumers, ConsumerFunc(func(_ context.Context, st *State) error {
		counts := map[policy.Key]int{}
		for _, w := range st.Workloads {
			if w.Remote {
				continue
			}
			ep, ok := st.Policy.Endpoint(w.ID)
			if !ok {
				continue
			}
			for _, ref := range policiesOf(ep) {
				counts[ref]++
			}
		}
		kp.mu.Lock()
		kp.counts, kp.rev = counts, st.Policy.Revision
		kp.mu.Unlock()
		kp.status.Trigger()
		return nil
	}))
	return kp
}

func (kp *kubePolicies) enforcing() (map[policy.Key]int, uint64) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	return kp.counts, kp.rev
}

// run runs the source and the status writer in g.
func (kp *kubePolicies) run(ctx context.Context, g *errgroup.Group, a *Agent) {
	g.Go(func() error { return kp.pols.Run(ctx) })
	if kp.status != nil {
		g.Go(func() error { return kp.status.Run(ctx) })
	}
	g.Go(func() error {
		select {
		case <-a.eng.published:
		case <-ctx.Done():
			return nil
		}
		if kp.pending.Swap(false) {
			a.eng.publish(ctx)
		}
		return nil
	})
}

// kubePolicyChanged publishes a change of the Kubernetes policies once the
// first publish (which includes every object of the first list) is done.
func (a *Agent) kubePolicyChanged(ctx context.Context) {
	a.kpol.pending.Store(true)
	select {
	case <-a.eng.published:
	default:
		return
	}
	if a.kpol.pending.Swap(false) {
		a.eng.publish(ctx)
	}
}

// policiesOf lists the policies that give an endpoint's policy entries.
func policiesOf(p *policy.EndpointPolicy) []policy.Key {
	seen := map[policy.Key]bool{}
	var out []policy.Key
	add := func(o *policy.Origin) {
		if o != nil && !seen[o.Policy] {
			seen[o.Policy] = true
			out = append(out, o.Policy)
		}
	}
	for _, d := range []*policy.DirectionPolicy{p.Ingress, p.Egress} {
		if d == nil {
			continue
		}
		for _, e := range d.Allow {
			add(e.Origin)
		}
		for _, e := range d.Deny {
			add(e.Origin)
		}
		for _, l7 := range d.Proxy {
			for _, s := range l7.Selections {
				for _, o := range s.Origins {
					add(o)
				}
			}
		}
	}
	return out
}

// kubeStatus is the Kubernetes block of the status (nil without one).
func (a *Agent) kubeStatus() *api.Kubernetes {
	if a.kube == nil {
		return nil
	}
	s := a.kube.Status()
	k := &api.Kubernetes{Connected: s.Connected, Synced: s.Synced, SyncedAt: s.SyncedAt, LastContact: s.LastContact,
		DownSince: s.DownSince, LastError: s.LastError, Resources: s.Resources, NotServed: s.NotServed}
	if !s.Connected {
		since := s.LastContact
		if since.IsZero() {
			since = s.DownSince
		}
		if !since.IsZero() {
			k.StaleSeconds = time.Since(since).Seconds()
		}
	}
	if a.kpol != nil {
		for _, st := range a.kpol.pols.States() {
			if st.Err != nil {
				k.InvalidPolicies = append(k.InvalidPolicies, api.FileError{File: kube.OriginPrefix + st.Key.String(), Error: kube.ErrorMessage(st.Err)})
			}
		}
	}
	a.kubeSourcesStatus(k)
	return k
}
