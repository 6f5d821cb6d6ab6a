package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// policyResources is the Consumer that sends each state's policy
// resources (one NetworkPolicy per local endpoint and the identity table)
// to the in-Envoy filters over xDS. The identity table also holds the
// addresses the DNS proxy learnt for toFQDNs selectors (fqdn), so an L7
// rule on a toFQDNs destination sees the FQDN identity, not world.
//
// It runs before the datapath and returns once the connected proxy
// applied both (at most ackWait), as Cilium's endpoint regeneration waits
// for the proxy's ACK before it writes the datapath: a new pod's traffic
// is redirected to Envoy only once Envoy knows the pod's address and
// policy, not answered 403 for an unknown source in between.
type policyResources struct {
	srv *xds.Server
	log *slog.Logger
	// ackWait bounds Apply's wait for the proxy's ACK; zero:
	// defaultProxyAckWait.
	ackWait time.Duration
	// fqdn returns the DNS proxy's claims (prefix → FQDN identity); nil
	// without a DNS proxy. Set before the first Apply.
	fqdn func() map[netip.Prefix]uint32
	// node returns the nodes' claims (host, remote-node: nodeClaims);
	// nil: none.
	node func() map[netip.Prefix]uint32

	mu      sync.Mutex // one identity table sent at a time (a publish, the DNS proxy)
	cache   xds.TranslationCache
	ws      []xds.Workload // Apply's buffer
	applied bool           // base is a state's: the DNS proxy's claims alone are never sent
	base    []*npds.NetworkPolicyHosts
	pv      string // the versions the last Apply set
	hv      string
}

var _ Consumer = (*policyResources)(nil)

func (p *policyResources) Apply(ctx context.Context, st *State) error {
	p.mu.Lock()
	// The workloads in xds's terms, in a buffer kept from the last Apply
	// (the cache keeps nothing of it): 10,000 of them are not allocated
	// again for each publish.
	ws := p.ws[:0]
	for _, w := range st.Workloads {
		ws = append(ws, xds.Workload{Name: w.Name, ID: w.ID, IPs: w.Addrs, Remote: w.Remote})
	}
	ps, hosts := p.cache.Resources(st.Policy, ws)
	secretErr := joinDistinct(p.cache.SecretErrors())
	clear(ws) // no reference to this state's workloads kept
	p.ws = ws
	p.mu.Unlock()
	if p.node != nil {
		// Below the workloads' own addresses, as in the ipcache.
		hosts = xds.WithFQDN(hosts, p.node())
	}
	p.mu.Lock()
	p.base, p.applied = hosts, true
	hv := p.setHostsLocked()
	pv := p.srv.SetPolicies(ps)
	p.pv, p.hv = pv, hv
	p.mu.Unlock()
	p.log.Debug("policy resources", "endpoints", len(ps), "policy_version", pv, "hosts_version", hv)
	wait := p.ackWait
	if wait <= 0 {
		wait = defaultProxyAckWait
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	ackErr := p.waitAcked(ctx, npds.NetworkPolicyHostsType, hv)
	if ackErr == nil {
		ackErr = p.waitAcked(ctx, npds.NetworkPolicyType, pv)
	}
	return errors.Join(secretErr, ackErr)
}

// joinDistinct joins errs, each message once (a secret many endpoints'
// rules reference fails once).
func joinDistinct(errs []error) error {
	seen := map[string]bool{}
	var out []error
	for _, err := range errs {
		if m := err.Error(); !seen[m] {
			seen[m] = true
			out = append(out, err)
		}
	}
	return errors.Join(out...)
}

// secretsChanged drops the cached translations when a policy references
// a headerMatches secret (the next Apply resolves every secret again) and
// reports whether it did: then the caller publishes.
func (p *policyResources) secretsChanged() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.cache.UsesSecrets() {
		return false
	}
	p.cache.Invalidate()
	return true
}

// defaultProxyAckWait bounds a publish's wait for the proxy: a proxy that
// does not answer delays policy changes by this much, and the publish
// reports it.
const defaultProxyAckWait = 2 * time.Second

func (p *policyResources) setHostsLocked() string {
	hosts := p.base
	if p.fqdn != nil {
		hosts = xds.WithFQDN(hosts, p.fqdn())
	}
	return p.srv.SetHosts(hosts)
}

// syncHosts sends the identity table again with the DNS proxy's current
// claims and returns its version. Before the first Apply it sends nothing
// and returns "": a table of the claims alone would replace the endpoints'
// addresses in an Envoy adopted from the previous run (the first publish
// sends them all).
func (p *policyResources) syncHosts() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.applied {
		return ""
	}
	return p.setHostsLocked()
}

// versions returns the policy and hosts versions of the last Apply.
func (p *policyResources) versions() (pv, hv string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pv, p.hv
}

// waitAcked waits until the proxy acknowledged version want of typeURL, or
// a later one, or rejected it, or ctx is done. Without a connected policy
// client it returns at once: there is nobody to wait for (a client that
// connects later gets the whole current set before its filters serve; an
// Envoy whose ADS stream is up but whose module has not subscribed yet is
// not waited for either).
func (p *policyResources) waitAcked(ctx context.Context, typeURL, want string) error {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for p.srv.PolicyStreams() > 0 && !versionReached(p.srv.Acked(typeURL), want) {
		if n, ok := p.srv.LastNACK(typeURL); ok && versionReached(n.Version, want) {
			return fmt.Errorf("the proxy rejected %s: %s", n.Version, n.Message)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the proxy to apply %s: %w", want, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// versionReached compares the policy types' versions (a letter prefix and
// a counter, xds.Server.SetHosts): got is want or later.
func versionReached(got, want string) bool {
	if want == "" || got == want {
		return true
	}
	g, err1 := strconv.ParseUint(strings.TrimLeft(got, "abcdefghijklmnopqrstuvwxyz"), 10, 64)
	w, err2 := strconv.ParseUint(strings.TrimLeft(want, "abcdefghijklmnopqrstuvwxyz"), 10, 64)
	return err1 == nil && err2 == nil && g >= w
}
