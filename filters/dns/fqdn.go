package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/policy/matchpattern"
)

// MinFQDNIdentity is the first identity of the locally scoped range FQDN
// identities come from (2^24 + 1, as Cilium's local CIDR/FQDN identities).
const MinFQDNIdentity = 1<<24 + 1

// IPCache is the datapath's IP → identity map (the BPF ipcache). Upsert and
// Delete must be safe for concurrent use; when they return, the datapath
// uses the new entry.
type IPCache interface {
	Upsert(prefix netip.Prefix, identity uint32) error
	Delete(prefix netip.Prefix) error
}

// IdentityAllocator gives the local identity of a set of toFQDNs selectors
// (sorted SelectorLabel strings, like Cilium's fqdn: labels). The same set
// must always give the same identity while it is in use. Safe for concurrent
// use.
type IdentityAllocator interface {
	AllocateFQDN(selectors []string) (uint32, error)
}

// PolicyUpdater puts in place the policy entries (the BPF policy maps) that
// concern newly allocated identities. Apply returns when they are in place,
// or with ctx's error.
type PolicyUpdater interface {
	Apply(ctx context.Context, identities []uint32) error
}

// ConnTracker tells whether an endpoint still has connections to an IP
// (conntrack), which keeps an expired IP as a zombie.
type ConnTracker interface {
	InUse(endpoint uint64, ip netip.Addr) bool
}

// SelectorLabel is the canonical string of a toFQDNs selector, the label the
// identity allocator receives: "matchName:NAME", "matchPattern:PATTERN" or
// both joined by ",", lower case, no trailing dot.
func SelectorLabel(s policy.PortRuleDNS) string {
	var parts []string
	if s.MatchName != "" {
		parts = append(parts, "matchName:"+lowerName(strings.TrimSpace(s.MatchName)))
	}
	if s.MatchPattern != "" {
		parts = append(parts, "matchPattern:"+lowerName(strings.TrimSpace(s.MatchPattern)))
	}
	return strings.Join(parts, ",")
}

type selector struct {
	label   string
	name    string // matchName, normalised
	pattern *matchpattern.Matcher
}

func (s *selector) match(name string) bool {
	return s.name != "" && s.name == name || s.pattern != nil && s.pattern.Match(name)
}

func compileSelectors(sels []policy.PortRuleDNS) ([]selector, error) {
	var out []selector
	var errs []error
	seen := make(map[string]bool)
	for i, s := range sels {
		label := SelectorLabel(s)
		if label == "" {
			errs = append(errs, fmt.Errorf("toFQDNs[%d]: neither matchName nor matchPattern is set", i))
			continue
		}
		if seen[label] {
			continue
		}
		seen[label] = true
		cs := selector{label: label}
		if s.MatchName != "" {
			n, err := normaliseName(s.MatchName)
			if err != nil {
				errs = append(errs, fmt.Errorf("toFQDNs[%d].matchName: %w", i, err))
				continue
			}
			cs.name = n
		}
		if s.MatchPattern != "" {
			p, err := matchpattern.Compile(s.MatchPattern)
			if err != nil {
				errs = append(errs, fmt.Errorf("toFQDNs[%d].matchPattern: %w", i, err))
				continue
			}
			cs.pattern = p
		}
		out = append(out, cs)
	}
	return out, errors.Join(errs...)
}

// selectorSet is the compiled toFQDNs selectors, indexed like Matcher (by
// matchName, and by the literal suffix of matchPattern) so that relabelling
// an IP costs a few map lookups per name, not one match per selector.
type selectorSet struct {
	list     []selector
	byName   map[string][]int
	bySuffix map[string][]int
	other    []int
}

func newSelectorSet(list []selector) *selectorSet {
	s := &selectorSet{list: list, byName: map[string][]int{}, bySuffix: map[string][]int{}}
	for i, sel := range list {
		if sel.name != "" {
			s.byName[sel.name] = append(s.byName[sel.name], i)
		}
		if sel.pattern != nil {
			if suf := literalSuffix(sel.pattern.String()); suf != "" {
				s.bySuffix[suf] = append(s.bySuffix[suf], i)
			} else {
				s.other = append(s.other, i)
			}
		}
	}
	return s
}

// matching appends to labels (without duplicates) the labels of the
// selectors matching name (lower case, no trailing dot).
func (s *selectorSet) matching(name string, labels []string) []string {
	add := func(idx []int) {
		for _, i := range idx {
			sel := &s.list[i]
			if sel.match(name) && !slices.Contains(labels, sel.label) {
				labels = append(labels, sel.label)
			}
		}
	}
	add(s.byName[name])
	add(s.other)
	for suf := name; ; {
		add(s.bySuffix[suf])
		i := strings.IndexByte(suf, '.')
		if i < 0 {
			return labels
		}
		suf = suf[i+1:]
	}
}

// applied is what the updater last wrote to the ipcache for one IP.
type applied struct {
	key      string // joined selector labels
	identity uint32
}

type updateReq struct {
	ips  []netip.Addr
	all  bool // reconcile every cached IP
	done chan struct{}
}

// updater owns the ipcache writes: one goroutine (run) applies requests in
// batches, so writes are ordered and a waiter released after its request is
// done sees every earlier request done too.
type updater struct {
	cache  *Cache
	ipc    IPCache
	alloc  IdentityAllocator
	policy PolicyUpdater
	conns  ConnTracker
	log    *slog.Logger
	stats  *Stats

	selectors  atomic.Pointer[selectorSet]
	reqs       chan updateReq
	resync     chan struct{} // wakes run: selectors changed
	resyncWant atomic.Uint64 // selector generations set
	resyncDone atomic.Uint64 // selector generation fully applied
	dirty      atomic.Bool   // the ipcache view changed since the last save

	// mu guards applied, ids and pending. Lock order: mu before the
	// cache's lock, never the reverse.
	mu       sync.Mutex
	applied  map[netip.Addr]applied
	ids      map[string]uint32
	pending  map[netip.Addr]int      // queued, not yet reconciled requests per IP
	deferred map[netip.Addr]struct{} // changed IPs whose request could not be queued
}

func newUpdater(cache *Cache, ipc IPCache, alloc IdentityAllocator, pol PolicyUpdater, conns ConnTracker, log *slog.Logger, stats *Stats) *updater {
	u := &updater{
		cache: cache, ipc: ipc, alloc: alloc, policy: pol, conns: conns, log: log, stats: stats,
		reqs:     make(chan updateReq, 1024),
		resync:   make(chan struct{}, 1),
		applied:  make(map[netip.Addr]applied),
		ids:      make(map[string]uint32),
		pending:  make(map[netip.Addr]int),
		deferred: make(map[netip.Addr]struct{}),
	}
	u.selectors.Store(newSelectorSet(nil))
	return u
}

// learn records an answer in the cache and reports whether the answer
// must wait before its release, and for which IPs: when one of its IPs got
// a new name (changed), when an earlier answer's update of one of them is
// still queued, or when a selector change is pending. A waiting answer's
// request carries all its IPs (and those the per-name cap dropped), so
// whichever queued request runs first reconciles them from the cache as it
// is then, which already holds every update that marked them pending.
func (u *updater) learn(ep uint64, name string, ips []netip.Addr, ttl time.Duration, now time.Time) (reconcile []netip.Addr, wait bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	changed := u.cache.Update(ep, name, ips, ttl, now)
	resyncing := u.resyncDone.Load() < u.resyncWant.Load()
	if len(u.selectors.Load().list) == 0 && len(u.applied) == 0 {
		// Nothing selects any name: no identity to write. A later
		// SetSelectors relabels every cached IP.
		return nil, resyncing
	}
	wait = len(changed) > 0 || resyncing
	for i := 0; !wait && i < len(ips); i++ {
		wait = u.pending[ips[i].Unmap()] > 0
	}
	if !wait {
		return nil, false
	}
	reconcile = changed
	for _, ip := range ips {
		if ip = ip.Unmap(); !slices.Contains(reconcile, ip) {
			reconcile = append(reconcile, ip)
		}
	}
	for _, ip := range reconcile {
		u.pending[ip]++
	}
	return reconcile, true
}

// deferIPs takes IPs whose request was never queued (the answer timed out
// first): run reconciles them on its next wake-up.
func (u *updater) deferIPs(ips []netip.Addr) {
	if len(ips) == 0 {
		return
	}
	u.mu.Lock()
	for _, ip := range ips {
		if u.pending[ip]--; u.pending[ip] <= 0 {
			delete(u.pending, ip)
		}
		u.deferred[ip] = struct{}{}
	}
	u.mu.Unlock()
	select {
	case u.resync <- struct{}{}:
	default:
	}
}

// run serves requests and garbage-collects until ctx ends.
func (u *updater) run(ctx context.Context, gcEvery time.Duration, save func()) {
	t := time.NewTicker(gcEvery)
	defer t.Stop()
	for {
		var batch []updateReq
		select {
		case <-ctx.Done():
			return
		case r := <-u.reqs:
			batch = append(batch, r)
		drain:
			for len(batch) < 256 {
				select {
				case r := <-u.reqs:
					batch = append(batch, r)
				default:
					break drain
				}
			}
		case <-u.resync:
		case <-t.C:
			u.gc(ctx, time.Now())
			if save != nil {
				save()
			}
			continue
		}
		set := make(map[netip.Addr]struct{})
		all := false
		for _, r := range batch {
			all = all || r.all
			for _, ip := range r.ips {
				set[ip] = struct{}{}
			}
		}
		u.mu.Lock()
		for ip := range u.deferred {
			set[ip] = struct{}{}
		}
		clear(u.deferred)
		u.mu.Unlock()
		want := u.resyncWant.Load()
		if all || u.resyncDone.Load() < want {
			for ip := range u.allIPs() {
				set[ip] = struct{}{}
			}
		}
		u.reconcile(ctx, set)
		u.resyncDone.Store(want)
		u.mu.Lock()
		for _, r := range batch {
			for _, ip := range r.ips {
				if u.pending[ip]--; u.pending[ip] <= 0 {
					delete(u.pending, ip)
				}
			}
		}
		u.mu.Unlock()
		for _, r := range batch {
			close(r.done)
		}
	}
}

// allIPs returns the cached IPs and the IPs in the ipcache.
func (u *updater) allIPs() map[netip.Addr]struct{} {
	set := make(map[netip.Addr]struct{})
	for _, ip := range u.cache.IPs() {
		set[ip] = struct{}{}
	}
	u.mu.Lock()
	for ip := range u.applied {
		set[ip] = struct{}{}
	}
	u.mu.Unlock()
	return set
}

// gc expires entries, keeps zombies that connections use, and removes the
// IPs nothing maps any more.
func (u *updater) gc(ctx context.Context, now time.Time) {
	zs := u.cache.Expire(now)
	alive := make(map[ZombieRef]bool)
	if u.conns != nil {
		for _, z := range zs {
			if u.conns.InUse(z.Endpoint, z.IP) {
				alive[z] = true
			}
		}
	}
	changed := u.cache.Reap(alive)
	if len(changed) == 0 {
		return
	}
	set := make(map[netip.Addr]struct{}, len(changed))
	for _, ip := range changed {
		set[ip] = struct{}{}
	}
	u.reconcile(ctx, set)
}

// reconcile writes the identity each IP in set should have: the one of the
// set of selectors matching any name that maps to it, or none.
func (u *updater) reconcile(ctx context.Context, set map[netip.Addr]struct{}) {
	sels := u.selectors.Load()
	var fresh []uint32
	for ip := range set {
		var labels []string
		if len(sels.list) > 0 {
			for _, name := range u.cache.NamesOf(ip) {
				labels = sels.matching(name, labels)
			}
		}
		slices.Sort(labels)
		key := strings.Join(labels, "\x00")
		u.mu.Lock()
		prev, had := u.applied[ip]
		id, known := u.ids[key]
		u.mu.Unlock()
		if had && prev.key == key {
			continue
		}
		prefix := netip.PrefixFrom(ip, ip.BitLen())
		if key == "" {
			if err := u.ipc.Delete(prefix); err != nil {
				u.stats.IPCacheErrors.Add(1)
				u.log.Warn("ipcache delete failed", "ip", ip, "error", err)
				continue
			}
			u.mu.Lock()
			delete(u.applied, ip)
			u.mu.Unlock()
			u.dirty.Store(true)
			continue
		}
		if !known {
			var err error
			id, err = u.alloc.AllocateFQDN(labels)
			if err != nil {
				u.stats.IPCacheErrors.Add(1)
				u.log.Warn("fqdn identity allocation failed", "selectors", labels, "error", err)
				continue
			}
			u.mu.Lock()
			u.ids[key] = id
			u.mu.Unlock()
			fresh = append(fresh, id)
		}
		if err := u.ipc.Upsert(prefix, id); err != nil {
			u.stats.IPCacheErrors.Add(1)
			u.log.Warn("ipcache upsert failed", "ip", ip, "identity", id, "error", err)
			continue
		}
		u.stats.IPCacheUpserts.Add(1)
		u.mu.Lock()
		u.applied[ip] = applied{key: key, identity: id}
		u.mu.Unlock()
		u.dirty.Store(true)
	}
	if len(fresh) > 0 && u.policy != nil {
		if err := u.policy.Apply(ctx, fresh); err != nil {
			u.stats.IPCacheErrors.Add(1)
			u.log.Warn("policy update for fqdn identities failed", "identities", fresh, "error", err)
		}
	}
}

// identityOf returns the identity applied to ip.
func (u *updater) identityOf(ip netip.Addr) (uint32, []string, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	a, ok := u.applied[ip]
	if !ok {
		return 0, nil, false
	}
	return a.identity, splitKey(a.key), true
}

func splitKey(key string) []string {
	if key == "" {
		return nil
	}
	return strings.Split(key, "\x00")
}

// MemIPCache is an in-memory IPCache for tests and for running without a
// datapath. Safe for concurrent use.
type MemIPCache struct {
	mu sync.Mutex
	m  map[netip.Prefix]uint32
}

var _ IPCache = (*MemIPCache)(nil)

// Upsert sets prefix's identity.
func (c *MemIPCache) Upsert(prefix netip.Prefix, identity uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[netip.Prefix]uint32)
	}
	c.m[prefix] = identity
	return nil
}

// Delete removes prefix.
func (c *MemIPCache) Delete(prefix netip.Prefix) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, prefix)
	return nil
}

// Lookup returns the identity of ip's host prefix.
func (c *MemIPCache) Lookup(ip netip.Addr) (uint32, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id, ok := c.m[netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen())]
	return id, ok
}

// Len returns the number of entries.
func (c *MemIPCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// LocalAllocator allocates FQDN identities in memory, sequentially from
// MinFQDNIdentity, one per distinct selector set. Safe for concurrent use.
type LocalAllocator struct {
	mu   sync.Mutex
	next uint32
	ids  map[string]uint32
}

var _ IdentityAllocator = (*LocalAllocator)(nil)

// AllocateFQDN returns the identity of the selector set.
func (a *LocalAllocator) AllocateFQDN(selectors []string) (uint32, error) {
	if len(selectors) == 0 {
		return 0, errors.New("allocate fqdn identity: no selectors")
	}
	key := strings.Join(selectors, "\x00")
	a.mu.Lock()
	defer a.mu.Unlock()
	if id, ok := a.ids[key]; ok {
		return id, nil
	}
	if a.ids == nil {
		a.ids = make(map[string]uint32)
		a.next = MinFQDNIdentity
	}
	if a.next == 0 { // wrapped around
		return 0, errors.New("allocate fqdn identity: identity space exhausted")
	}
	id := a.next
	a.next++
	a.ids[key] = id
	return id, nil
}

// SelectorMatches reports whether the selector with the given SelectorLabel
// matches name (for introspection: `ward fqdn names`). Labels that do not
// parse match nothing.
func SelectorMatches(label, name string) bool {
	var s policy.PortRuleDNS
	for _, part := range strings.Split(label, ",") {
		switch {
		case strings.HasPrefix(part, "matchName:"):
			s.MatchName = strings.TrimPrefix(part, "matchName:")
		case strings.HasPrefix(part, "matchPattern:"):
			s.MatchPattern = strings.TrimPrefix(part, "matchPattern:")
		default:
			return false
		}
	}
	cs, err := compileSelectors([]policy.PortRuleDNS{s})
	if err != nil || len(cs) != 1 {
		return false
	}
	return cs[0].match(lowerName(name))
}
