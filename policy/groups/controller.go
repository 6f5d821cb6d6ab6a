package groups

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"sync"
	"time"

	"github.com/wardproxy/ward/policy"
)

// Repo is what the controller needs of the policy repository.
type Repo interface {
	Policies() []*policy.Policy
	Upsert(p *policy.Policy)
	Delete(k policy.Key) bool
}

// Status is one parent policy's derivative state.
type Status struct {
	Policy     string    `json:"policy"`
	Derivative string    `json:"derivative,omitempty"`
	CIDRs      []string  `json:"cidrs,omitempty"`
	Refreshed  time.Time `json:"refreshed,omitzero"`
	Error      string    `json:"error,omitempty"`
}

// Controller keeps the derivatives of the repository's policies with
// groups. Zero value not usable: set Repo and Provider.
type Controller struct {
	Repo Repo
	// Provider resolves groups; nil: every policy with groups is
	// reported ("no provider configured") and has no derivative.
	Provider Provider
	// Interval between full refreshes; default one minute.
	Interval time.Duration
	// Poll is how often the repository is checked for new or changed
	// policies with groups; default one second.
	Poll time.Duration
	// OnChange is called after derivatives were added, changed or
	// removed (the agent publishes).
	OnChange func()
	// Mirror, when set, is told of every derivative written (d) or
	// removed (d nil; old the one removed) for parent, so it can keep a
	// copy elsewhere (wardd: a derivative CiliumNetworkPolicy object on
	// Kubernetes, as Cilium's operator writes). Its error is reported in
	// the parent's status; the derivative stays enforced either way.
	Mirror func(ctx context.Context, parent, d, old *policy.Policy) error
	Log    *slog.Logger

	mu      sync.Mutex
	parents map[policy.Key]*parentState
}

type parentState struct {
	parent     *policy.Policy // the version last resolved
	derivative *policy.Policy
	refreshed  time.Time
	err        error
	mirrorErr  error
}

// Run refreshes until ctx is done.
func (c *Controller) Run(ctx context.Context) error {
	interval, poll := c.Interval, c.Poll
	if interval <= 0 {
		interval = time.Minute
	}
	if poll <= 0 {
		poll = time.Second
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		c.Sync(ctx, interval)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Sync resolves the parents that are new, changed, or older than maxAge,
// and removes the derivatives of parents that are gone.
func (c *Controller) Sync(ctx context.Context, maxAge time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.parents == nil {
		c.parents = map[policy.Key]*parentState{}
	}
	changed := false
	seen := map[policy.Key]bool{}
	for _, p := range c.Repo.Policies() {
		if !p.HasGroups() {
			continue
		}
		k := p.Key()
		seen[k] = true
		st := c.parents[k]
		if st == nil {
			st = &parentState{}
			c.parents[k] = st
		}
		if st.parent == p && time.Since(st.refreshed) < maxAge {
			continue
		}
		changed = c.resolve(ctx, p, st) || changed
	}
	for k, st := range c.parents {
		if seen[k] {
			continue
		}
		if st.derivative != nil {
			c.Repo.Delete(st.derivative.Key())
			changed = true
			c.mirror(ctx, st, nil, st.derivative)
		}
		delete(c.parents, k)
	}
	if changed && c.OnChange != nil {
		c.OnChange()
	}
}

// resolve computes p's derivative; on an error the last one stays.
func (c *Controller) resolve(ctx context.Context, p *policy.Policy, st *parentState) bool {
	st.parent, st.refreshed = p, time.Now()
	if c.Provider == nil {
		st.err = fmt.Errorf("toGroups/fromGroups need a provider: configure toGroups.aws in the node config")
		return false
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	d, err := Derivative(rctx, p, c.Provider)
	if err != nil {
		st.err = err
		if c.Log != nil {
			c.Log.Warn("toGroups: derivative not refreshed, the last one stays", "policy", p.Key().String(), "error", err)
		}
		return false
	}
	st.err = nil
	old := st.derivative
	st.derivative = d
	switch {
	case d == nil && old == nil:
		return false
	case d == nil:
		c.Repo.Delete(old.Key())
		c.mirror(ctx, st, nil, old)
		return true
	case old != nil && reflect.DeepEqual(old.Rules(), d.Rules()):
		st.derivative = old
		if st.mirrorErr != nil {
			c.mirror(ctx, st, old, nil) // retry a failed copy
		}
		return false
	}
	c.Repo.Upsert(d)
	c.mirror(ctx, st, d, old)
	return true
}

// mirror hands a derivative change to Mirror; its error is kept for the
// status (and the copy retried at the next refresh).
func (c *Controller) mirror(ctx context.Context, st *parentState, d, old *policy.Policy) {
	if c.Mirror == nil {
		return
	}
	st.mirrorErr = c.Mirror(ctx, st.parent, d, old)
	if st.mirrorErr != nil && c.Log != nil {
		c.Log.Warn("toGroups: derivative not mirrored", "policy", st.parent.Key().String(), "error", st.mirrorErr)
	}
}

// Status lists every parent's derivative, sorted by policy.
func (c *Controller) Status() []Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Status, 0, len(c.parents))
	for k, st := range c.parents {
		s := Status{Policy: k.String(), Refreshed: st.refreshed}
		switch {
		case st.err != nil:
			s.Error = st.err.Error()
		case st.mirrorErr != nil:
			s.Error = "mirror: " + st.mirrorErr.Error()
		}
		if d := st.derivative; d != nil {
			s.Derivative = d.Key().String()
			for _, r := range d.Rules() {
				for _, in := range r.Ingress {
					for _, cr := range in.FromCIDRSet {
						s.CIDRs = append(s.CIDRs, cr.CIDR)
					}
				}
				for _, e := range r.Egress {
					for _, cr := range e.ToCIDRSet {
						s.CIDRs = append(s.CIDRs, cr.CIDR)
					}
				}
			}
			sort.Strings(s.CIDRs)
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Policy < out[j].Policy })
	return out
}
