package dns

import (
	"container/list"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"
)

// Cache is the FQDN cache: per endpoint, names → IPs learnt from allowed
// answers, each IP with its expiry. An expired IP becomes a zombie and stays
// mapped (so its identity stays in the ipcache) while a connection of that
// endpoint still uses it; zombies are capped. The cache also keeps the
// global IP → names index the toFQDNs identities are computed from.
//
// The cache is bounded: IPs per name and endpoint (the oldest by last
// lookup become zombies), names with live IPs per endpoint and on the node
// (the least recently looked-up name is evicted: its IPs become zombies),
// TTLs between MinTTL and MaxTTL, and zombies (MaxZombies, enforced at each
// collection). Evictions are counted in Stats.
//
// Cache is safe for concurrent use; its lock is never held across calls out
// of the package.
type Cache struct {
	minTTL        time.Duration
	maxTTL        time.Duration
	maxIPsPerName int
	maxZombies    int
	maxNamesPerEP int
	maxNames      int
	stats         *Stats // eviction counters

	mu      sync.Mutex
	eps     map[uint64]map[string]*nameEntry
	lru     *list.List                    // names with live IPs, most recently looked up first
	epLRU   map[uint64]*list.List         // the same per endpoint
	ipNames map[netip.Addr]map[string]int // holders of (name, ip) over endpoints
	zombies int
	dirty   bool
	seq     uint64
}

// nameEntry is one endpoint's IPs for one name. The live and dead queues
// order its IPs by last lookup and by death, so the per-name cap evicts the
// oldest in amortised constant time: items are checked lazily against the
// entry's current sequence number and dropped when stale.
type nameEntry struct {
	ep         uint64
	name       string
	ips        map[netip.Addr]*entry
	live, dead []qitem
	nLive      int
	gel, eel   *list.Element // in Cache.lru and Cache.epLRU[ep] while nLive > 0
}

type qitem struct {
	ip  netip.Addr
	seq uint64
}

type entry struct {
	expires time.Time // end of the TTL
	seen    time.Time // last answer carrying this IP
	zombie  bool      // expired; kept while a connection uses it
	died    time.Time // when it became a zombie
	seq     uint64    // of the last lookup or death
}

// push appends an item and compacts a queue grown far beyond its valid
// items.
func (n *nameEntry) push(q *[]qitem, it qitem, zombie bool) {
	*q = append(*q, it)
	if len(*q) > 2*len(n.ips)+64 {
		*q = slices.DeleteFunc(*q, func(it qitem) bool { return !n.valid(it, zombie) })
	}
}

func (n *nameEntry) valid(it qitem, zombie bool) bool {
	e, ok := n.ips[it.ip]
	return ok && e.seq == it.seq && e.zombie == zombie
}

// popOldest removes and returns the oldest valid item of a queue.
func (n *nameEntry) popOldest(q *[]qitem, zombie bool) (netip.Addr, bool) {
	for len(*q) > 0 {
		it := (*q)[0]
		*q = (*q)[1:]
		if n.valid(it, zombie) {
			return it.ip, true
		}
	}
	return netip.Addr{}, false
}

func (c *Cache) nextSeq() uint64 {
	c.seq++
	return c.seq
}

// kill turns a live entry into a zombie.
func (c *Cache) kill(n *nameEntry, ip netip.Addr, e *entry, now time.Time) {
	e.zombie, e.died, e.seq = true, now, c.nextSeq()
	n.nLive--
	if n.nLive == 0 {
		c.unlink(n)
	}
	c.zombies++
	c.dirty = true
	n.push(&n.dead, qitem{ip, e.seq}, true)
}

// touch moves n (which has live IPs) to the front of the name LRUs.
func (c *Cache) touch(n *nameEntry) {
	if n.gel != nil {
		c.lru.MoveToFront(n.gel)
		c.epLRU[n.ep].MoveToFront(n.eel)
		return
	}
	n.gel = c.lru.PushFront(n)
	l := c.epLRU[n.ep]
	if l == nil {
		l = list.New()
		c.epLRU[n.ep] = l
	}
	n.eel = l.PushFront(n)
}

// unlink takes n (no live IP left, or deleted) out of the name LRUs.
func (c *Cache) unlink(n *nameEntry) {
	if n.gel == nil {
		return
	}
	c.lru.Remove(n.gel)
	l := c.epLRU[n.ep]
	l.Remove(n.eel)
	if l.Len() == 0 {
		delete(c.epLRU, n.ep)
	}
	n.gel, n.eel = nil, nil
}

// capNames evicts the least recently looked-up names beyond the
// per-endpoint and node caps (never keep, the name just looked up): their
// live IPs become zombies, so connections using them survive until the
// collection finds them unused. The global name set does not change.
func (c *Cache) capNames(ep uint64, keep *nameEntry, now time.Time) {
	evict := func(l *list.List, limit int) {
		for l != nil && l.Len() > limit {
			n := l.Back().Value.(*nameEntry)
			if n == keep {
				return
			}
			for ip, e := range n.ips {
				if !e.zombie {
					c.kill(n, ip, e, now) // the last kill unlinks n
				}
			}
			c.stats.NameEvictions.Add(1)
		}
	}
	evict(c.epLRU[ep], c.maxNamesPerEP)
	evict(c.lru, c.maxNames)
}

// capIPs applies the per-name cap to endpoint ep's name n: the oldest live
// IPs (by last lookup) become zombies, and the oldest zombies beyond the
// cap go. It returns the IPs whose global name set changed.
func (c *Cache) capIPs(ep uint64, name string, n *nameEntry, now time.Time) []netip.Addr {
	var changed []netip.Addr
	for n.nLive > c.maxIPsPerName {
		ip, ok := n.popOldest(&n.live, false)
		if !ok {
			break
		}
		c.kill(n, ip, n.ips[ip], now)
		c.stats.IPEvictions.Add(1)
	}
	for len(n.ips)-n.nLive > c.maxIPsPerName {
		ip, ok := n.popOldest(&n.dead, true)
		if !ok {
			break
		}
		if c.remove(ep, name, ip) {
			changed = append(changed, ip)
		}
		c.stats.ZombieEvictions.Add(1)
	}
	return changed
}

// CacheEntry is one endpoint's view of one name and IP, as listed by
// `ward fqdn cache list` and persisted.
type CacheEntry struct {
	Endpoint uint64     `json:"endpoint"`
	Name     string     `json:"name"`
	IP       netip.Addr `json:"ip"`
	Expires  time.Time  `json:"expires"`
	Seen     time.Time  `json:"seen"`
	Zombie   bool       `json:"zombie,omitempty"`
}

// ZombieRef names one zombie, for the connection check.
type ZombieRef struct {
	Endpoint uint64
	IP       netip.Addr
}

// NewCache returns an empty cache with cfg's TTL bounds and caps (MinTTL,
// MaxTTL, MaxIPsPerName, MaxZombies, MaxNamesPerEndpoint, MaxNames; zero
// means the default). Its eviction counters are in Stats.
func NewCache(cfg Config) *Cache {
	cfg = cfg.withDefaults()
	return &Cache{
		minTTL:        cfg.MinTTL,
		maxTTL:        max(cfg.MaxTTL, cfg.MinTTL),
		maxIPsPerName: max(cfg.MaxIPsPerName, 1),
		maxZombies:    max(cfg.MaxZombies, 0),
		maxNamesPerEP: max(cfg.MaxNamesPerEndpoint, 1),
		maxNames:      max(cfg.MaxNames, 1),
		stats:         new(Stats),
		eps:           make(map[uint64]map[string]*nameEntry),
		lru:           list.New(),
		epLRU:         make(map[uint64]*list.List),
		ipNames:       make(map[netip.Addr]map[string]int),
	}
}

// Stats returns the cache's counters (the proxy's, for a proxy's cache).
func (c *Cache) Stats() *Stats { return c.stats }

// nameEntry returns (creating) endpoint ep's entry for name.
func (c *Cache) nameEntry(ep uint64, name string) *nameEntry {
	names := c.eps[ep]
	if names == nil {
		names = make(map[string]*nameEntry)
		c.eps[ep] = names
	}
	n := names[name]
	if n == nil {
		n = &nameEntry{ep: ep, name: name, ips: make(map[netip.Addr]*entry)}
		names[name] = n
	}
	return n
}

// Update records that endpoint ep resolved name to ips with ttl (held
// between MinTTL and MaxTTL) at now. It returns the IPs whose global name
// set changed (new name-IP pairs, and pairs dropped by the per-name cap),
// the only ones whose identity may change.
func (c *Cache) Update(ep uint64, name string, ips []netip.Addr, ttl time.Duration, now time.Time) []netip.Addr {
	if len(ips) == 0 {
		return nil
	}
	name = lowerName(name)
	ttl = c.clampTTL(ttl)
	expires := now.Add(ttl)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dirty = true
	n := c.nameEntry(ep, name)
	var changed []netip.Addr
	for _, ip := range ips {
		ip = ip.Unmap()
		e, ok := n.ips[ip]
		if !ok {
			e = &entry{}
			n.ips[ip] = e
			n.nLive++
			if c.hold(name, ip) {
				changed = append(changed, ip)
			}
		} else if e.zombie { // a new lookup revives the zombie
			e.zombie = false
			c.zombies--
			n.nLive++
		}
		e.expires, e.seen, e.seq = expires, now, c.nextSeq()
		n.push(&n.live, qitem{ip, e.seq}, false)
	}
	c.touch(n)
	changed = append(changed, c.capIPs(ep, name, n, now)...)
	c.capNames(ep, n, now)
	return changed
}

// clampTTL holds ttl between MinTTL and MaxTTL.
func (c *Cache) clampTTL(ttl time.Duration) time.Duration {
	return min(max(ttl, c.minTTL), c.maxTTL)
}

// hold adds a holder of (name, ip) and reports whether the pair is new.
func (c *Cache) hold(name string, ip netip.Addr) bool {
	ns := c.ipNames[ip]
	if ns == nil {
		ns = make(map[string]int, 1)
		c.ipNames[ip] = ns
	}
	ns[name]++
	return ns[name] == 1
}

// remove deletes an endpoint's entry and reports whether the global pair
// (name, ip) disappeared.
func (c *Cache) remove(ep uint64, name string, ip netip.Addr) bool {
	n := c.eps[ep][name]
	if n == nil {
		return false
	}
	e, ok := n.ips[ip]
	if !ok {
		return false
	}
	if e.zombie {
		c.zombies--
	} else if n.nLive--; n.nLive == 0 {
		c.unlink(n)
	}
	delete(n.ips, ip)
	if len(n.ips) == 0 {
		delete(c.eps[ep], name)
		if len(c.eps[ep]) == 0 {
			delete(c.eps, ep)
		}
	}
	c.dirty = true
	ns := c.ipNames[ip]
	ns[name]--
	if ns[name] > 0 {
		return false
	}
	delete(ns, name)
	if len(ns) == 0 {
		delete(c.ipNames, ip)
	}
	return true
}

// Expire turns the entries whose TTL ended by now into zombies and returns
// every zombie, for the caller to check against live connections (outside
// the cache lock) before calling Reap.
func (c *Cache) Expire(now time.Time) []ZombieRef {
	c.mu.Lock()
	defer c.mu.Unlock()
	var zs []ZombieRef
	for ep, names := range c.eps {
		for _, n := range names {
			for ip, e := range n.ips {
				if !e.zombie && !e.expires.After(now) {
					c.kill(n, ip, e, now)
				}
				if e.zombie {
					zs = append(zs, ZombieRef{Endpoint: ep, IP: ip})
				}
			}
		}
	}
	return zs
}

// Reap deletes the zombies not in alive, then the oldest alive ones beyond
// the zombie cap, and returns the IPs whose global name set changed.
func (c *Cache) Reap(alive map[ZombieRef]bool) []netip.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	type z struct {
		ep   uint64
		name string
		ip   netip.Addr
		died time.Time
	}
	var kept []z
	changed := make(map[netip.Addr]bool)
	for ep, names := range c.eps {
		for name, n := range names {
			for ip, e := range n.ips {
				if !e.zombie {
					continue
				}
				if alive[ZombieRef{Endpoint: ep, IP: ip}] {
					kept = append(kept, z{ep, name, ip, e.died})
					continue
				}
				if c.remove(ep, name, ip) {
					changed[ip] = true
				}
			}
		}
	}
	if n := len(kept) - c.maxZombies; n > 0 {
		sort.Slice(kept, func(i, j int) bool { return kept[i].died.Before(kept[j].died) })
		for _, k := range kept[:n] {
			if c.remove(k.ep, k.name, k.ip) {
				changed[k.ip] = true
			}
		}
		c.stats.ZombieEvictions.Add(uint64(n))
	}
	out := make([]netip.Addr, 0, len(changed))
	for ip := range changed {
		out = append(out, ip)
	}
	return out
}

// NamesOf returns the names (over all endpoints, zombies included) that
// currently map to ip, sorted.
func (c *Cache) NamesOf(ip netip.Addr) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ns := c.ipNames[ip]
	out := make([]string, 0, len(ns))
	for n := range ns {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// IPs returns every IP held by the cache.
func (c *Cache) IPs() []netip.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]netip.Addr, 0, len(c.ipNames))
	for ip := range c.ipNames {
		out = append(out, ip)
	}
	return out
}

// Lookup returns the live (unexpired at now) IPs endpoint ep has for name.
func (c *Cache) Lookup(ep uint64, name string, now time.Time) []netip.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []netip.Addr
	n := c.eps[ep][lowerName(name)]
	if n == nil {
		return nil
	}
	for ip, e := range n.ips {
		if !e.zombie && e.expires.After(now) {
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// Entries returns every entry, sorted by endpoint, name and IP.
func (c *Cache) Entries() []CacheEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []CacheEntry
	for ep, names := range c.eps {
		for name, n := range names {
			for ip, e := range n.ips {
				out = append(out, CacheEntry{Endpoint: ep, Name: name, IP: ip, Expires: e.expires, Seen: e.seen, Zombie: e.zombie})
			}
		}
	}
	slices.SortFunc(out, func(a, b CacheEntry) int {
		if a.Endpoint != b.Endpoint {
			if a.Endpoint < b.Endpoint {
				return -1
			}
			return 1
		}
		if a.Name != b.Name {
			if a.Name < b.Name {
				return -1
			}
			return 1
		}
		return a.IP.Compare(b.IP)
	})
	return out
}

// Restore adds persisted entries. Entries keep their expiry (cut to
// MaxTTL from now); those that expired while the proxy was down come back
// as zombies, so they survive until a connection check has seen them
// (connections established before the restart keep working). The caps
// hold for restored entries too, whatever the file holds.
func (c *Cache) Restore(entries []CacheEntry, now time.Time) {
	// Oldest lookups first, so the per-name order survives the restart.
	entries = slices.Clone(entries)
	slices.SortStableFunc(entries, func(a, b CacheEntry) int { return a.Seen.Compare(b.Seen) })
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ce := range entries {
		if !ce.IP.IsValid() || ce.Name == "" {
			continue
		}
		name, ip := lowerName(ce.Name), ce.IP.Unmap()
		n := c.nameEntry(ce.Endpoint, name)
		if _, ok := n.ips[ip]; ok {
			continue
		}
		expires := ce.Expires
		if limit := now.Add(c.maxTTL); expires.After(limit) {
			expires = limit
		}
		e := &entry{expires: expires, seen: ce.Seen, seq: c.nextSeq()}
		n.ips[ip] = e
		n.nLive++
		n.push(&n.live, qitem{ip, e.seq}, false)
		c.touch(n)
		if ce.Zombie || !ce.Expires.After(now) {
			c.kill(n, ip, e, now)
		}
		c.hold(name, ip)
		c.capIPs(ce.Endpoint, name, n, now)
		c.capNames(ce.Endpoint, n, now)
	}
}

// Zombies returns the number of zombies.
func (c *Cache) Zombies() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.zombies
}

// takeDirty reports whether the cache changed since the last call.
func (c *Cache) takeDirty() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.dirty
	c.dirty = false
	return d
}
